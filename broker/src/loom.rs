//! Chooses the synchronisation primitives once for the crate: loom's model-checked ones when
//! the loom tests run (`RUSTFLAGS="--cfg weir_loom"`, tests only), std's otherwise. The cfg is
//! namespaced so a plain `--cfg loom` never flips our dependencies into their loom modes.

#[cfg(not(all(test, weir_loom)))]
pub(crate) use std::sync;

#[cfg(all(test, weir_loom))]
pub(crate) use loom::sync;
