use sliceout::model::{wrn, ModelConfig};
use sliceout::schedule::*;
fn main() {
    for keep in [1.0, 0.5] {
        let c = ModelConfig {
            depth: 28,
            widen: 10,
            classes: 10,
            in_channels: 3,
            keep,
        };
        let s = wrn::build(&c, 128, Mode::Train, Options::default());
        s.validate().unwrap();
        let l = s.lifetimes();
        let peak = (0..s.steps.len())
            .map(|i| {
                l.iter()
                    .filter(|b| b.first <= i && i <= b.last)
                    .map(|b| b.bytes)
                    .sum::<usize>()
            })
            .max()
            .unwrap();
        let pers = s.persistent_len() * 4;
        println!("keep {keep}: steps {} bufs {} peak live {:.0} MiB persistent {:.0} MiB naive {:.0} MiB", s.steps.len(), s.buffers.len(), peak as f64 / 1048576.0, pers as f64 / 1048576.0, l.iter().map(|b| b.bytes).sum::<usize>() as f64 / 1048576.0);
    }
}
