//! Test harness shared by the integration tests (`mod support;`): a moto
//! server run from a pinned venv, the CloudFormation stack of
//! `deploy/imagetag.yaml` deployed and wired into it, and the service
//! binaries run against them.

// Each test binary compiles its own copy of this module and uses only part
// of it.
#![allow(dead_code, unused_imports)]

pub mod api;
pub mod corpus;
pub mod index;
pub mod moto;
pub mod proxy;
pub mod services;
pub mod stack;
pub mod up;

pub use moto::{
    ACCOUNT_ID, Moto, REGION, ensure_pinned_venv, ensure_venv, venv_bin, workspace_root,
};
pub use stack::{Resource, Stack, deploy, load_template, template_path, unique_prefix};
