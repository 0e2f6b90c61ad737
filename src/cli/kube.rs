//! The Kubernetes client of `jobgate controller` and `jobgate status`,
//! from a kubeconfig (and context) or the environment, as kubectl finds it.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::error::{Error, Result};

/// The client, and the namespace the configuration's context names
/// (`default` when it names none).
pub async fn client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<(kube::Client, String)> {
    let config = config(kubeconfig, context).await?;
    let namespace = config.default_namespace.clone();
    let client = kube::Client::try_from(config).map_err(|e| {
        Error::InvalidArgument(format!(
            "cannot build a Kubernetes client from the configuration: {e}"
        ))
    })?;
    Ok((client, namespace))
}

/// The client's configuration, from a kubeconfig (and context) or the
/// environment.
pub async fn config(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<kube::Config> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|e| {
                Error::InvalidArgument(format!(
                    "cannot read kubeconfig {}: {e}; check the path given to --kubeconfig",
                    path.display()
                ))
            })?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| {
                    Error::InvalidArgument(format!(
                        "kubeconfig {} cannot be used: {e}; check its current context or pass --context",
                        path.display()
                    ))
                })?
        }
        // A context names an entry of a kubeconfig file, so with one only
        // the files (KUBECONFIG, ~/.kube/config) are looked at.
        None if context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| {
                Error::InvalidArgument(format!(
                    "the kubeconfig (KUBECONFIG or ~/.kube/config) cannot be used: {e}; check --context or pass --kubeconfig"
                ))
            })?,
        None => kube::Config::infer()
            .await
            .map_err(|e| {
                Error::InvalidArgument(format!(
                    "no Kubernetes configuration found ({e}); pass --kubeconfig or set KUBECONFIG"
                ))
            })?,
    };
    Ok(config)
}
