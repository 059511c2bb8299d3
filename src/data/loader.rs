//! From a loaded split to model input: per-channel normalisation statistics, the seeded epoch
//! shuffle, and `fill_batch`, which writes a batch straight into the channel-major `(C, N, 32,
//! 32)` layout the model reads (so channel `c` of image `i` starts at `(c*N + i)*1024`).
//!
//! `fill_batch` runs every step, so it allocates nothing: normalisation goes through a small
//! per-channel lookup table on the stack (256 values, the same numbers as the formula), and
//! augmentation (random 32x32 crop of the image padded by 4, random horizontal flip, as
//! torchvision's `RandomCrop(32, padding=4)` + `RandomHorizontalFlip`) reads source pixels
//! directly, with pad pixels taken as raw 0 (black) before normalisation.

use super::{Split, PLANE};
use crate::ir::Elem;
use crate::rng::Rng;
use rayon::prelude::*;

/// Most channels `fill_batch` handles (its lookup tables live on the stack).
pub const MAX_CHANNELS: usize = 4;
/// Padding of the random crop, in pixels on each side.
pub const CROP_PAD: usize = 4;
/// The largest |mean| a stored normalisation may have: pixels are in [0, 1], and so is the mean
/// of any dataset; past this the constants are nobody's.
pub const MAX_NORM_MEAN: f32 = 1e3;
/// The smallest deviation a stored normalisation may have. [`Normalization::from_split`] never
/// gives less than about `1 / (255 sqrt(pixels))`, far above this for any split that fits in
/// memory; with `|mean| <= MAX_NORM_MEAN`, every normalised pixel stays below 1e15 (finite in f32).
pub const MIN_NORM_STD: f32 = 1e-12;

/// Per-channel mean and standard deviation of `pixel / 255` over a training split.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    /// Constants read from a file, judged before anything is normalised with them: one mean and
    /// one deviation per channel, each within [`MAX_NORM_MEAN`] and [`MIN_NORM_STD`], so that
    /// `(x - mean) / std` is finite for every pixel `x` in [0, 1]. `Err` names the first value
    /// out of range (`norm_std[1] = 1e-45 ...`); the caller names the file.
    pub fn check(&self) -> Result<(), String> {
        if self.mean.len() != self.std.len() {
            return Err(format!(
                "normalisation has {} norm_mean values but {} norm_std values: expected one of each per channel",
                self.mean.len(),
                self.std.len()
            ));
        }
        if let Some((c, m)) = self.mean.iter().enumerate().find(|(_, m)| !(-MAX_NORM_MEAN..=MAX_NORM_MEAN).contains(*m))
        {
            return Err(format!(
                "norm_mean[{c}] = {m:?} is out of range: expected a normalisation mean within +-{MAX_NORM_MEAN:?} \
                 (pixels are in [0, 1])"
            ));
        }
        if let Some((c, s)) = self.std.iter().enumerate().find(|(_, s)| !(s.is_finite() && **s >= MIN_NORM_STD)) {
            return Err(format!(
                "norm_std[{c}] = {s:?} is out of range: expected a finite normalisation deviation >= {MIN_NORM_STD:?}"
            ));
        }
        Ok(())
    }

    /// Statistics of `split` (population standard deviation, as the usual CIFAR constants).
    /// Computed from per-channel byte histograms, so the sums are exact; a constant channel
    /// (or an empty split) gets std 1 so that normalising never divides by zero.
    pub fn from_split(split: &Split, channels: usize) -> Normalization {
        assert!(channels > 0);
        assert_eq!(split.images.len(), split.len * channels * PLANE);
        let per_image = channels * PLANE;
        let hist = split
            .images
            .par_chunks(per_image * 64)
            .fold(
                || vec![[0u64; 256]; channels],
                |mut h, chunk| {
                    for (i, &p) in chunk.iter().enumerate() {
                        h[(i % per_image) / PLANE][p as usize] += 1;
                    }
                    h
                },
            )
            .reduce(
                || vec![[0u64; 256]; channels],
                |mut a, b| {
                    for (ha, hb) in a.iter_mut().zip(&b) {
                        for (x, y) in ha.iter_mut().zip(hb) {
                            *x += y;
                        }
                    }
                    a
                },
            );
        let mut mean = Vec::with_capacity(channels);
        let mut std = Vec::with_capacity(channels);
        for h in &hist {
            let n: u64 = h.iter().sum();
            if n == 0 {
                mean.push(0.0);
                std.push(1.0);
                continue;
            }
            let n = n as f64;
            let m = h.iter().enumerate().map(|(v, &k)| k as f64 * (v as f64 / 255.0)).sum::<f64>() / n;
            let var = h.iter().enumerate().map(|(v, &k)| k as f64 * (v as f64 / 255.0 - m).powi(2)).sum::<f64>() / n;
            mean.push(m as f32);
            std.push(if var > 0.0 { var.sqrt() as f32 } else { 1.0 });
        }
        Normalization { mean, std }
    }

    /// The normalised value of every byte for channel `c`: `(p/255 - mean[c]) / std[c]`.
    pub fn table(&self, c: usize) -> [f32; 256] {
        let mut t = [0f32; 256];
        for (p, v) in t.iter_mut().enumerate() {
            *v = (p as f32 / 255.0 - self.mean[c]) / self.std[c];
        }
        t
    }
}

/// A fresh shuffle of `0..n` for one epoch.
pub fn epoch_order(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    order
}

/// One image's augmentation: the crop's top-left corner `(dx, dy)` in the image padded by
/// [`CROP_PAD`] (0..=8 each; 4, 4 is the image itself) and whether to flip horizontally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crop {
    pub dx: usize,
    pub dy: usize,
    pub flip: bool,
}

impl Crop {
    /// No augmentation.
    pub const IDENTITY: Crop = Crop { dx: CROP_PAD, dy: CROP_PAD, flip: false };

    /// Draws one image's augmentation. Order, fixed: `dx = below(9)`, then `dy = below(9)`,
    /// then `flip = below(2) == 1`.
    pub fn draw(rng: &mut Rng) -> Crop {
        let dx = rng.below(2 * CROP_PAD + 1);
        let dy = rng.below(2 * CROP_PAD + 1);
        let flip = rng.below(2) == 1;
        Crop { dx, dy, flip }
    }
}

/// Writes one 32x32 plane: output pixel `(y, x)` is the padded image's pixel
/// `(y + dy, x' + dx)` with `x' = 31 - x` when flipped, else `x`; pixels of the padding read as
/// raw 0. Values go through `table` (the normalisation of each byte).
pub fn crop_plane<T: Elem>(out: &mut [T], src: &[u8], crop: Crop, table: &[T; 256]) {
    assert_eq!(out.len(), PLANE);
    assert_eq!(src.len(), PLANE);
    assert!(crop.dx <= 2 * CROP_PAD && crop.dy <= 2 * CROP_PAD);
    let black = table[0];
    for (y, row) in out.chunks_exact_mut(32).enumerate() {
        // Source row in the unpadded image; out of 0..32 means a padding row.
        let sy = y + crop.dy;
        if !(CROP_PAD..CROP_PAD + 32).contains(&sy) {
            row.fill(black);
            continue;
        }
        let src_row = &src[(sy - CROP_PAD) * 32..(sy - CROP_PAD + 1) * 32];
        for (x, v) in row.iter_mut().enumerate() {
            let xx = if crop.flip { 31 - x } else { x };
            let sx = xx + crop.dx;
            *v = if (CROP_PAD..CROP_PAD + 32).contains(&sx) { table[src_row[sx - CROP_PAD] as usize] } else { black };
        }
    }
}

/// Writes images `indices` of `split` into `x` as `(C, N, 32, 32)` with `N = indices.len()`,
/// normalised by `norm`, and their labels (as exact f32) into `y`. With `augment`, each image,
/// in the order of `indices`, draws one [`Crop`] (see [`Crop::draw`] for the draw order) that
/// all its channels share. Allocates nothing; the same rng state gives the same batch.
pub fn fill_batch(
    x: &mut [f32],
    y: &mut [f32],
    split: &Split,
    indices: &[usize],
    channels: usize,
    norm: &Normalization,
    mut augment: Option<&mut Rng>,
) {
    fill_batch_with(x, y, split, indices, channels, norm, |_| match augment.as_deref_mut() {
        Some(rng) => Crop::draw(rng),
        None => Crop::IDENTITY,
    })
}

/// [`fill_batch`] with the crop of the `i`-th image of the batch given by `crop_of(i)` (called
/// once per image, in order): backends that gather batches themselves take crops drawn by the
/// trainer.
pub fn fill_batch_with<T: Elem>(
    x: &mut [T],
    y: &mut [f32],
    split: &Split,
    indices: &[usize],
    channels: usize,
    norm: &Normalization,
    mut crop_of: impl FnMut(usize) -> Crop,
) {
    let n = indices.len();
    assert!(channels > 0 && channels <= MAX_CHANNELS, "channels {channels}");
    assert_eq!(x.len(), channels * n * PLANE, "x must hold (C, N, 32, 32)");
    assert_eq!(y.len(), n, "y must hold one label per image");
    assert_eq!(split.images.len(), split.len * channels * PLANE);
    assert_eq!(split.labels.len(), split.len);
    assert!(norm.mean.len() == channels && norm.std.len() == channels);
    // Each pixel value's normalised value in the buffer's type (rounded once, when narrower).
    let mut tables = [[T::default(); 256]; MAX_CHANNELS];
    for (c, t) in tables.iter_mut().enumerate().take(channels) {
        *t = norm.table(c).map(T::from_f32);
    }
    for (i, &idx) in indices.iter().enumerate() {
        assert!(idx < split.len, "index {idx} out of split of {}", split.len);
        let crop = crop_of(i);
        let image = &split.images[idx * channels * PLANE..(idx + 1) * channels * PLANE];
        for c in 0..channels {
            let at = (c * n + i) * PLANE;
            crop_plane(&mut x[at..at + PLANE], &image[c * PLANE..(c + 1) * PLANE], crop, &tables[c]);
        }
        y[i] = split.labels[idx] as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(n: usize, channels: usize, seed: u64) -> Split {
        let mut rng = Rng::new(seed, 99);
        Split {
            images: (0..n * channels * PLANE).map(|_| rng.below(256) as u8).collect(),
            labels: (0..n).map(|i| (i * 3 % 10) as u8).collect(),
            len: n,
        }
    }

    #[test]
    fn normalization_matches_direct_computation() {
        let s = split(70, 3, 1);
        let norm = Normalization::from_split(&s, 3);
        for c in 0..3 {
            let vals: Vec<f64> = (0..70)
                .flat_map(|i| s.images[(i * 3 + c) * PLANE..(i * 3 + c + 1) * PLANE].iter().map(|&p| p as f64 / 255.0))
                .collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let v = vals.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / vals.len() as f64;
            assert!((norm.mean[c] as f64 - m).abs() < 1e-6, "{} vs {m}", norm.mean[c]);
            assert!((norm.std[c] as f64 - v.sqrt()).abs() < 1e-6);
        }
        // Channels differ when their data do.
        let mut t = split(10, 2, 2);
        t.images[..PLANE].fill(255);
        let n2 = Normalization::from_split(&t, 2);
        assert!(n2.mean[0] > n2.mean[1]);
        // A constant channel gets std 1, not 0.
        let flat = Split { images: vec![7; 2 * PLANE], labels: vec![0, 1], len: 2 };
        let nf = Normalization::from_split(&flat, 1);
        assert_eq!(nf.std, vec![1.0]);
        assert!((nf.mean[0] - 7.0 / 255.0).abs() < 1e-7);
    }

    /// What `from_split` computes always passes `check`, even the smallest deviation a split
    /// can have (one pixel off by 1/255); constants whose normalised pixels would overflow, or
    /// that are not numbers, are refused by name.
    #[test]
    fn check_takes_any_split_and_refuses_extreme_constants() {
        let mut one_off = Split { images: vec![0; 400 * PLANE], labels: vec![0; 400], len: 400 };
        one_off.images[5] = 1;
        let tiny = Normalization::from_split(&one_off, 1);
        assert!(tiny.std[0] < 1e-5 && tiny.check().is_ok(), "{tiny:?}");
        assert!(Normalization::from_split(&split(10, 3, 4), 3).check().is_ok());

        let norm = |mean: Vec<f32>, std: Vec<f32>| Normalization { mean, std }.check().unwrap_err();
        for (mean, std, expect) in [
            (3e38, 0.25, "norm_mean[1] = 3e38 is out of range"),
            (-1001.0, 0.25, "norm_mean[1] = -1001.0 is out of range"),
            (f32::NAN, 0.25, "norm_mean[1] = NaN"),
            (0.5, 1e-45, "norm_std[1] = 1e-45 is out of range"),
            (0.5, 0.0, "norm_std[1] = 0.0"),
            (0.5, -0.25, "norm_std[1] = -0.25"),
            (0.5, f32::INFINITY, "norm_std[1] = inf"),
        ] {
            let msg = norm(vec![0.5, mean], vec![0.25, std]);
            assert!(msg.contains(expect) && msg.contains("normalisation"), "{msg}");
        }
        assert!(norm(vec![0.5], vec![]).contains("1 norm_mean values but 0 norm_std values"));
        // At the bounds, every normalised pixel is finite.
        let edge = Normalization { mean: vec![-MAX_NORM_MEAN], std: vec![MIN_NORM_STD] };
        assert!(edge.check().is_ok() && edge.table(0).iter().all(|v| v.is_finite()));
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_order(100, &mut Rng::new(3, 2));
        let b = epoch_order(100, &mut Rng::new(3, 2));
        let c = epoch_order(100, &mut Rng::new(4, 2));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(a, sorted);
    }

    #[test]
    fn fill_batch_layout_and_normalisation_exact() {
        let s = split(6, 3, 5);
        let norm = Normalization { mean: vec![0.5, 0.25, 0.1], std: vec![0.2, 0.3, 0.4] };
        let idx = [4, 1, 5];
        let n = idx.len();
        let mut x = vec![f32::NAN; 3 * n * PLANE];
        let mut y = vec![f32::NAN; n];
        fill_batch(&mut x, &mut y, &s, &idx, 3, &norm, None);
        assert_eq!(y, vec![2.0, 3.0, 5.0]);
        for (i, &img) in idx.iter().enumerate() {
            for c in 0..3 {
                for p in [0, 1, 33, 500, 1023] {
                    let raw = s.images[(img * 3 + c) * PLANE + p];
                    let want = (raw as f32 / 255.0 - norm.mean[c]) / norm.std[c];
                    assert_eq!(x[(c * n + i) * PLANE + p], want, "i{i} c{c} p{p}");
                }
            }
        }
        assert!(x.iter().all(|v| v.is_finite()));
    }

    /// The identity table: each byte maps to itself, so crops can be read back as bytes.
    fn ident() -> [f32; 256] {
        std::array::from_fn(|p| p as f32)
    }

    #[test]
    fn crop_and_flip_put_pixels_where_expected() {
        // Source pixel (y, x) = 1 + (y*32 + x) % 250: never 0, so padding shows as 0.
        let src: Vec<u8> = (0..PLANE).map(|p| (1 + p % 250) as u8).collect();
        let at = |y: usize, x: usize| (1 + (y * 32 + x) % 250) as f32;
        let mut out = vec![-1f32; PLANE];
        let t = ident();

        crop_plane(&mut out, &src, Crop::IDENTITY, &t);
        assert!((0..PLANE).all(|p| out[p] == src[p] as f32));

        // Offset (0, 0): the image shifted down-right by 4, black top/left border.
        crop_plane(&mut out, &src, Crop { dx: 0, dy: 0, flip: false }, &t);
        assert_eq!(out[3 * 32 + 10], 0.0);
        assert_eq!(out[10 * 32 + 3], 0.0);
        assert_eq!(out[4 * 32 + 4], at(0, 0));
        assert_eq!(out[31 * 32 + 31], at(27, 27));

        // Offset (8, 6) with a flip: out(y, x) = padded(y + 6, 31 - x + 8).
        crop_plane(&mut out, &src, Crop { dx: 8, dy: 6, flip: true }, &t);
        // x = 0 reads padded column 39 = image column 35: padding.
        assert_eq!(out[0], 0.0);
        assert_eq!(out[3], 0.0);
        // x = 4 reads padded column 35 = image column 31; y = 0 reads image row 2.
        assert_eq!(out[4], at(2, 31));
        assert_eq!(out[5 * 32 + 31], at(7, 4));
        // Rows past the image bottom: y = 30 reads image row 32.
        assert!(out[30 * 32..].iter().all(|&v| v == 0.0));
        assert_eq!(out[29 * 32 + 20], at(31, 15));
    }

    #[test]
    fn augmented_batch_is_deterministic_and_uses_drawn_crops() {
        let s = split(5, 3, 9);
        let norm = Normalization::from_split(&s, 3);
        let idx = [3, 0, 4, 4];
        let n = idx.len();
        let mut rng = Rng::new(11, crate::rng::stream::AUGMENT);
        let saved = rng.clone();
        let (mut x1, mut y1) = (vec![0f32; 3 * n * PLANE], vec![0f32; n]);
        fill_batch(&mut x1, &mut y1, &s, &idx, 3, &norm, Some(&mut rng));
        let after = rng.clone();
        let mut rng2 = saved.clone();
        let (mut x2, mut y2) = (vec![0f32; 3 * n * PLANE], vec![0f32; n]);
        fill_batch(&mut x2, &mut y2, &s, &idx, 3, &norm, Some(&mut rng2));
        assert_eq!(x1, x2);
        assert_eq!(y1, y2);
        assert_eq!(rng2, after);

        // Each image is its own crop, drawn in index order, shared by its channels.
        let mut replay = saved.clone();
        let mut plane = vec![0f32; PLANE];
        let mut any_changed = false;
        for (i, &img) in idx.iter().enumerate() {
            let crop = Crop::draw(&mut replay);
            any_changed |= crop != Crop::IDENTITY;
            for c in 0..3 {
                let src = &s.images[(img * 3 + c) * PLANE..(img * 3 + c + 1) * PLANE];
                crop_plane(&mut plane, src, crop, &norm.table(c));
                assert_eq!(&x1[(c * n + i) * PLANE..(c * n + i + 1) * PLANE], &plane[..]);
            }
        }
        assert!(any_changed);
        assert_eq!(replay, after);

        // Another state gives another batch; no augmentation gives the plain batch.
        let mut other = Rng::new(12, crate::rng::stream::AUGMENT);
        fill_batch(&mut x2, &mut y2, &s, &idx, 3, &norm, Some(&mut other));
        assert_ne!(x1, x2);
        fill_batch(&mut x2, &mut y2, &s, &idx, 3, &norm, None);
        let (mut x3, mut y3) = (vec![0f32; 3 * n * PLANE], vec![0f32; n]);
        fill_batch(&mut x3, &mut y3, &s, &idx, 3, &norm, None);
        assert_eq!(x2, x3);
    }

    /// A bf16 batch is the f32 batch rounded once per value (the normalised pixel values are
    /// rounded in the table), crops and labels alike.
    #[test]
    fn a_bf16_batch_is_the_f32_batch_rounded() {
        use crate::ir::Bf16;
        let s = split(6, 3, 4);
        let norm = Normalization::from_split(&s, 3);
        let (idx, n) = ([5, 1, 1, 0], 4);
        let crops =
            [Crop { dx: 3, dy: 7, flip: true }, Crop::IDENTITY, Crop { dx: 8, dy: 0, flip: false }, Crop::IDENTITY];
        let (mut x32, mut y32) = (vec![0f32; 3 * n * PLANE], vec![0f32; n]);
        let (mut x16, mut y16) = (vec![Bf16::default(); 3 * n * PLANE], vec![0f32; n]);
        fill_batch_with(&mut x32, &mut y32, &s, &idx, 3, &norm, |i| crops[i]);
        fill_batch_with(&mut x16, &mut y16, &s, &idx, 3, &norm, |i| crops[i]);
        assert_eq!(y16, y32);
        assert!(x16.iter().zip(&x32).all(|(a, &b)| *a == Bf16::from_f32(b)));
        assert!(x16.iter().zip(&x32).any(|(a, &b)| a.to_f32() != b), "normalised values need rounding");
    }

    #[test]
    fn crop_draws_cover_the_range() {
        let mut rng = Rng::new(1, 3);
        let (mut dx, mut dy, mut flips) = ([0usize; 9], [0usize; 9], 0);
        for _ in 0..900 {
            let c = Crop::draw(&mut rng);
            dx[c.dx] += 1;
            dy[c.dy] += 1;
            flips += c.flip as usize;
        }
        assert!(dx.iter().chain(&dy).all(|&k| k > 50), "{dx:?} {dy:?}");
        assert!((350..550).contains(&flips), "{flips}");
    }

    #[test]
    #[should_panic]
    fn fill_batch_checks_lengths() {
        let s = split(2, 3, 1);
        let norm = Normalization::from_split(&s, 3);
        let mut x = vec![0f32; 3 * PLANE];
        let mut y = vec![0f32; 2];
        fill_batch(&mut x, &mut y, &s, &[0, 1], 3, &norm, None);
    }
}
