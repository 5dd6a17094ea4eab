//! Reloading the pools from the configuration file, on SIGHUP: the new workers are probed
//! before the new pools are installed; an invalid file changes nothing.

use std::sync::Arc;

use super::config::pools_of;
use super::pools::{self, Snapshot};
use super::{describe, Gateway};
use crate::settings::ConfigFile;

impl Gateway {
    /// Re-reads the configuration file and installs its pools, once the new workers have been
    /// probed. Requests in flight finish on the pools they started with. An invalid file
    /// changes nothing.
    pub async fn reload(&self) -> anyhow::Result<Arc<Snapshot>> {
        let path = self.config_path().ok_or_else(|| anyhow::anyhow!("no --config file to reload"))?;
        let file = ConfigFile::read(&path)?;
        let pools = pools_of(&file)?;
        let previous = std::mem::replace(&mut *self.file.lock().unwrap_or_else(|p| p.into_inner()), file.clone());
        if file.without("pools") != previous.without("pools") {
            eprintln!(
                "blipserve: settings other than [[pools]] changed in {}: they apply at the next start",
                path.display()
            );
        }
        let (snapshot, fresh) = self.pools.prepare(&pools);
        pools::probe_all(&self.probe_client, fresh).await;
        Ok(self.pools.install(snapshot))
    }

    /// The file SIGHUP re-reads.
    pub fn config_path(&self) -> Option<std::path::PathBuf> {
        self.file.lock().unwrap_or_else(|p| p.into_inner()).path.clone()
    }
}

/// On SIGHUP, reloads the pools from the configuration file; a file that does not parse or
/// check is refused and the running pools stay. The handler is installed before this returns,
/// so a SIGHUP never kills the process once the gateway is listening.
pub fn spawn_reload_on_sighup(gw: Arc<Gateway>) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                let path = gw.config_path().map_or_else(|| "(none)".into(), |p| p.display().to_string());
                match gw.reload().await {
                    Ok(snapshot) => {
                        eprintln!(
                            "blipserve: reloaded {path} (generation {}): {}",
                            snapshot.generation,
                            describe(&snapshot)
                        );
                    }
                    Err(e) => {
                        eprintln!("blipserve: reload of {path} refused, keeping the running pools: {e:#}");
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = gw;
    Ok(())
}
