//! Deprovisioning: an organization's secrets removed, its streams and device state purged.
use redis::AsyncCommands;

use super::{Tenants, field};
use crate::store::{Conn, StoreError, key_slot};

impl Tenants {
    /// Removes the secrets (deprovisioning) and bumps the version so no in-flight refresh
    /// can write them back.
    pub async fn delete_secrets(&self, org: &str) -> Result<(), StoreError> {
        let key = self.store.keys().tenant(org);
        let _: () = self
            .store
            .query_pipe(
                redis::pipe()
                    .atomic()
                    .hdel(&key, field::SECRETS)
                    .ignore()
                    .hincr(&key, field::TOKEN_VERSION, 1)
                    .ignore(),
            )
            .await?;
        self.announce(org).await;
        Ok(())
    }

    /// Deletes an organization's streams and device state (deprovisioning with purge).
    pub async fn purge_streams(&self, org: &str) -> Result<(), StoreError> {
        let mut conn = self.store.conn()?;
        let keys = self.store.keys();
        let pattern = format!("{}:{{{org}}}:*", keys.prefix());
        let mut found: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500);
            let (next, batch): (u64, Vec<String>) = match &mut conn {
                // On a cluster SCAN visits one node: ask the one serving this org's slot (every
                // key of the org carries its hash tag).
                Conn::Cluster(c) => {
                    use redis::cluster_routing::{
                        Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
                    };
                    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                        Route::new(key_slot(&keys.tenant(org)), SlotAddr::Master),
                    ));
                    let v = self.store.bounded(c.route_command(scan, route)).await?;
                    redis::from_redis_value(v)
                        .map_err(|e| StoreError::Corrupt(format!("SCAN reply: {e}")))?
                }
                Conn::Single(_) | Conn::Sentinel(_) => {
                    self.store.bounded(scan.query_async(&mut conn)).await?
                }
            };
            found.extend(batch.into_iter().filter(|k| !k.ends_with(":tenant")));
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        for chunk in found.chunks(500) {
            let _: i64 = self.store.bounded(conn.del(chunk)).await?;
        }
        Ok(())
    }
}
