//! Tensor layouts: shape, strides and offset into a buffer (an arena region or a persistent
//! tensor). A layout is a view: narrowing it to a channel slice or to a range of weight columns
//! never copies data. Layouts are fixed-size values (up to 4 dimensions) so that building one
//! inside a training step allocates nothing.
//!
//! Dimension letters used across the crate: N batch, C channels, H height, W width,
//! K kernel size. Activations are channel-major `(C, N, H, W)`; weights are `(Cout, Cin, K, K)`,
//! read as the row-major matrix `[Cout, Cin*K*K]`.

pub const MAX_DIMS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    ndim: usize,
    shape: [usize; MAX_DIMS],
    strides: [usize; MAX_DIMS],
    pub offset: usize,
}

impl Layout {
    /// A row-major layout of `shape` starting at element 0.
    pub fn contiguous(shape: &[usize]) -> Layout {
        assert!(!shape.is_empty() && shape.len() <= MAX_DIMS);
        let mut l = Layout { ndim: shape.len(), shape: [1; MAX_DIMS], strides: [0; MAX_DIMS], offset: 0 };
        let mut stride = 1;
        for d in (0..shape.len()).rev() {
            l.shape[d] = shape[d];
            l.strides[d] = stride;
            stride *= shape[d];
        }
        l
    }

    /// A 2-D view: `rows x cols` at `offset` with the given row and column strides.
    pub fn matrix(offset: usize, rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Layout {
        let mut l = Layout::contiguous(&[rows, cols]);
        l.strides[0] = row_stride;
        l.strides[1] = col_stride;
        l.offset = offset;
        l
    }

    pub fn ndim(&self) -> usize {
        self.ndim
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape[..self.ndim]
    }
    pub fn strides(&self) -> &[usize] {
        &self.strides[..self.ndim]
    }
    pub fn dim(&self, d: usize) -> usize {
        self.shape[d]
    }
    pub fn stride(&self, d: usize) -> usize {
        self.strides[d]
    }
    pub fn numel(&self) -> usize {
        self.shape().iter().product()
    }

    /// True when the view covers `numel` consecutive elements in row-major order.
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for d in (0..self.ndim).rev() {
            if self.shape[d] != 1 && self.strides[d] != expected {
                return false;
            }
            expected *= self.shape[d];
        }
        true
    }

    /// The sub-view `start..start + len` along dimension `d` (same strides, moved offset).
    pub fn narrow(&self, d: usize, start: usize, len: usize) -> Layout {
        assert!(d < self.ndim && start + len <= self.shape[d], "narrow out of range");
        let mut l = *self;
        l.offset += start * self.strides[d];
        l.shape[d] = len;
        l
    }

    /// Swaps two dimensions (a transposed view).
    pub fn transpose(&self, a: usize, b: usize) -> Layout {
        let mut l = *self;
        l.shape.swap(a, b);
        l.strides.swap(a, b);
        l
    }

    /// Element offset of a multi-index.
    pub fn index(&self, idx: &[usize]) -> usize {
        debug_assert_eq!(idx.len(), self.ndim);
        self.offset + idx.iter().zip(self.strides()).map(|(i, s)| i * s).sum::<usize>()
    }

    /// One past the largest element offset the view touches (0 for an empty view).
    pub fn end(&self) -> usize {
        if self.numel() == 0 {
            return 0;
        }
        self.offset + self.shape().iter().zip(self.strides()).map(|(n, s)| (n - 1) * s).sum::<usize>() + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_column_slice_is_a_strided_view() {
        // A [Cout=4, Cin=6, 3, 3] weight as a [4, 54] matrix; input channels 2..5 are columns
        // 18..45 with the full leading dimension 54.
        let w = Layout::contiguous(&[4, 54]);
        let v = w.narrow(1, 2 * 9, 3 * 9);
        assert_eq!(v.shape(), &[4, 27]);
        assert_eq!(v.strides(), &[54, 1]);
        assert_eq!(v.offset, 18);
        assert!(!v.is_contiguous());
        assert_eq!(v.index(&[1, 0]), 54 + 18);
        assert_eq!(v.end(), 3 * 54 + 18 + 27);
        let rows = w.narrow(0, 1, 2);
        assert!(rows.is_contiguous());
        assert_eq!(rows.offset, 54);
    }

    #[test]
    fn channel_slice_of_an_activation_is_contiguous() {
        let a = Layout::contiguous(&[8, 2, 4, 4]);
        let s = a.narrow(0, 3, 2);
        assert!(s.is_contiguous());
        assert_eq!(s.offset, 3 * 32);
        let t = a.transpose(0, 1);
        assert_eq!(t.shape(), &[2, 8, 4, 4]);
        assert!(!t.is_contiguous());
    }
}
