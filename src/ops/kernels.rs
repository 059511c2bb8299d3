//! Every kernel the ops launch, as one table fixed when the crate is built: a constant per
//! kernel ([`KernelId`], or [`StorageKernel`] for the f32 / bf16 pair of a kernel over the
//! storage type) whose index is its place in [`NAMES`]. A GPU resolves [`NAMES`] once when it
//! starts (`gpu::Gpu::new`) and a launch indexes what it resolved, so a launch site cannot name
//! a kernel the table lacks, and a table entry no `.cu` file defines fails there, before any
//! step (and in this module's test, without a GPU).

use crate::gpu::{KernelId, StorageKernel};

/// Declares the table: `single` kernels have one entry point, each `storage` kernel `k` two,
/// `k` then `k_bf16`. Indices: the singles in order, then each pair's two.
macro_rules! kernel_table {
    (single { $($s:ident = $sn:literal,)* } storage { $($p:ident = $pn:literal,)* }) => {
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        enum Single { $($s,)* }
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        enum Pair { $($p,)* }
        const SINGLES: usize = [$($sn),*].len();
        $(pub const $s: KernelId = KernelId::new(Single::$s as u16, $sn);)*
        $(pub const $p: StorageKernel = StorageKernel {
            f32: KernelId::new((SINGLES + 2 * Pair::$p as usize) as u16, $pn),
            bf16: KernelId::new((SINGLES + 2 * Pair::$p as usize + 1) as u16, concat!($pn, "_bf16")),
        };)*
        /// Every kernel's name, at its [`KernelId`]'s index.
        pub const NAMES: &[&str] = &[$($sn,)* $($pn, concat!($pn, "_bf16"),)*];
    };
}

kernel_table! {
    single {
        WINOGRAD_WEIGHT = "winograd_weight",
        WINOGRAD_INPUT = "winograd_input",
        WINOGRAD_GRAD = "winograd_grad",
        WINOGRAD_OUTPUT = "winograd_output",
        WINOGRAD_WEIGHT_GRAD = "winograd_weight_grad",
        LINEAR_FORWARD = "linear_forward",
        LINEAR_BACKWARD = "linear_backward",
        CROSS_ENTROPY = "cross_entropy",
        SGD = "sgd",
        SGD_MULTI = "sgd_multi",
    }
    storage {
        IM2COL = "im2col",
        IM2COL_BN_RELU = "im2col_bn_relu",
        COL2IM = "col2im",
        WEIGHT_SLICE = "weight_slice",
        WEIGHT_FLIP = "weight_flip",
        BN_STATS = "bn_stats",
        BN_RELU_APPLY = "bn_relu_apply",
        BN_RELU_EVAL = "bn_relu_eval",
        BN_BACKWARD_SUMS = "bn_backward_sums",
        BN_RELU_BACKWARD = "bn_relu_backward",
        ADD = "add",
        AVGPOOL_FORWARD = "avgpool_forward",
        AVGPOOL_BACKWARD = "avgpool_backward",
        GATHER_BATCH = "gather_batch",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{kernel_names, kernel_params, resolve, MAX_ARGS};
    use crate::ir::Dtype;
    use crate::ops::KERNEL_FILES;

    /// The table is the kernel files' kernels, each once: it resolves against them (as a GPU
    /// resolves it when it starts), no kernel is left out, and none takes more arguments than a
    /// launch's array holds.
    #[test]
    fn the_table_is_every_kernel_of_the_kernel_files_once() {
        let declared: Vec<&str> = KERNEL_FILES.iter().flat_map(|(_, src)| kernel_names(src)).collect();
        let params = resolve(NAMES, |k| KERNEL_FILES.iter().find_map(|(_, src)| kernel_params(src, k)));
        let params = params.unwrap_or_else(|e| panic!("{e}"));
        assert!(params.iter().all(|&n| n <= MAX_ARGS), "{params:?}");
        assert_eq!(params.iter().max(), Some(&MAX_ARGS), "MAX_ARGS is the widest kernel's");
        let (mut table, mut files) = (NAMES.to_vec(), declared.clone());
        table.sort();
        files.sort();
        table.dedup();
        assert_eq!(table.len(), NAMES.len(), "a name twice in the table");
        assert_eq!(table, files);
    }

    /// Each constant's index is its name's place in the table, and a storage kernel's bf16 entry
    /// point is its f32 one's name with `_bf16`.
    #[test]
    fn handles_index_their_names() {
        for k in [SGD, SGD_MULTI, WINOGRAD_WEIGHT, CROSS_ENTROPY, IM2COL.f32, IM2COL.bf16, GATHER_BATCH.bf16] {
            assert_eq!(NAMES[k.index()], k.name());
        }
        assert_eq!(IM2COL.of(Dtype::Bf16).name(), "im2col_bf16");
        assert_eq!(IM2COL.of(Dtype::F32).name(), "im2col");
        assert_eq!(GATHER_BATCH.bf16.index(), NAMES.len() - 1);
    }
}
