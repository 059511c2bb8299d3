//! The geometry of a convolution layer.

/// The geometry of one convolution layer at full width. `cin` and `cout` are the layer's full
/// channel counts; slices narrow them per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvShape {
    pub fn ho(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }

    pub fn wo(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }

    /// Taps per input channel, `K*K`.
    pub fn kk(&self) -> usize {
        self.k * self.k
    }

    /// true for 1x1, stride 1, pad 0: the input is already the column matrix, no workspace.
    pub fn direct(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    /// Floats of the im2col columns of `in_width` input channels and `chunk` images (0 when
    /// `direct()`: the input already is the column matrix).
    pub fn im2col_len(&self, in_width: usize, chunk: usize) -> usize {
        if self.direct() {
            return 0;
        }
        in_width * self.kk() * self.chunk_images(chunk) * self.ho() * self.wo()
    }

    /// Multiply-adds of one forward pass with `out_width` output and `in_width` input channels.
    pub fn macs(&self, out_width: usize, in_width: usize) -> usize {
        out_width * in_width * self.kk() * self.n * self.ho() * self.wo()
    }

    /// Images per chunk: `chunk`, or the whole batch for 0 or anything larger.
    pub fn chunk_images(&self, chunk: usize) -> usize {
        if chunk == 0 || chunk >= self.n {
            self.n
        } else {
            chunk
        }
    }

    pub fn check(&self) {
        assert!(self.k >= 1 && self.stride >= 1, "conv: kernel and stride must be at least 1");
        assert!(
            self.h + 2 * self.pad >= self.k && self.w + 2 * self.pad >= self.k,
            "conv: kernel larger than the padded input"
        );
    }
}
