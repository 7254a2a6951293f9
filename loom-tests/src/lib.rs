//! Empty: the model is `tests/loom.rs`, built with `--cfg benefit_quota_loom`.
