use sliceout::ops::batchnorm::*;
use sliceout::rng::Rng;
use sliceout::sliceout::Slice;
use std::time::Instant;
fn main() {
    let (c, m) = (64, 32768);
    let mut r = Rng::new(1, 1);
    let x: Vec<f32> = (0..c * m).map(|_| r.normal()).collect();
    let dy: Vec<f32> = (0..c * m).map(|_| r.normal() * 1e-3).collect();
    let g = vec![1.0f32; c];
    let b = vec![0.1f32; c];
    let (mut rm, mut rv) = (vec![0.0; c], vec![1.0; c]);
    let mut out = vec![0.0; c * m];
    let mut stats = vec![0.0; 2 * c];
    let (mut dx, mut dg, mut db) = (vec![0.0; c * m], vec![0.0; c], vec![0.0; c]);
    for _ in 0..3 {
        let t = Instant::now();
        bn_relu_train(
            &mut out,
            &mut stats,
            &x,
            &g,
            &b,
            &mut rm,
            &mut rv,
            Slice::full(c),
            m,
            1.0,
        );
        let t1 = t.elapsed();
        let t = Instant::now();
        bn_relu_backward(
            &mut dx,
            &mut dg,
            &mut db,
            &dy,
            &x,
            &stats,
            &g,
            &b,
            Slice::full(c),
            m,
            1.0,
            false,
        );
        let t2 = t.elapsed();
        let t = Instant::now();
        bn_relu_backward(
            &mut dx,
            &mut dg,
            &mut db,
            &dy,
            &x,
            &stats,
            &g,
            &b,
            Slice::full(c),
            m,
            1.0,
            true,
        );
        println!(
            "train {:?} backward {:?} backward-acc {:?}",
            t1,
            t2,
            t.elapsed()
        );
    }
}
