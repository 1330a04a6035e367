//! The fleet at a glance: a handful of aggregate statements, none of which reads a row per device
//! into the process.

use super::*;

pub(super) async fn fleet_overview(
    conn: &mut AnyConnection,
    tenant: TenantKey,
    now: Millis,
) -> StoreResult<FleetOverview> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n, \
         COALESCE(SUM(CASE WHEN last_seen IS NULL THEN 1 ELSE 0 END), 0) AS never, \
         COALESCE(SUM(CASE WHEN last_seen >= $2 THEN 1 ELSE 0 END), 0) AS online \
         FROM devices WHERE tenant_id = $1",
    )
    .bind(tenant.0)
    .bind(now - ONLINE_MS)
    .fetch_one(&mut *conn)
    .await?;
    let devices = to_u64(row.try_get("n")?);
    let never_seen = to_u64(row.try_get("never")?);
    let online = to_u64(row.try_get("online")?);

    // One pass over the running-versions index gives both versions and protocols.
    let rows = sqlx::query(
        "SELECT fw_title, fw_version, protocol, COUNT(*) AS n FROM devices WHERE tenant_id = $1 \
         GROUP BY fw_title, fw_version, protocol",
    )
    .bind(tenant.0)
    .fetch_all(&mut *conn)
    .await?;
    let mut by_version: HashMap<String, u64> = HashMap::new();
    let mut by_protocol: HashMap<String, u64> = HashMap::new();
    for row in &rows {
        let title: Option<String> = row.try_get("fw_title")?;
        let version: Option<String> = row.try_get("fw_version")?;
        let protocol: Option<String> = row.try_get("protocol")?;
        let n = to_u64(row.try_get("n")?);
        let name = match (title, version) {
            (Some(title), Some(version)) => format!("{title}@{version}"),
            _ => "unknown".to_owned(),
        };
        *by_version.entry(name).or_default() += n;
        *by_protocol
            .entry(protocol.unwrap_or_else(|| "unknown".to_owned()))
            .or_default() += n;
    }
    let most_first = |counts: HashMap<String, u64>| {
        let mut list: Vec<(String, u64)> = counts.into_iter().collect();
        list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        list
    };
    let mut versions = most_first(by_version);
    versions.truncate(OVERVIEW_VERSIONS);
    let protocols = most_first(by_protocol);

    let rows = sqlx::query(
        "SELECT a.state, COUNT(*) AS n FROM \
         (SELECT MAX(id) AS id FROM actions WHERE tenant_id = $1 GROUP BY device_pk) latest \
         JOIN actions a ON a.id = latest.id GROUP BY a.state",
    )
    .bind(tenant.0)
    .fetch_all(&mut *conn)
    .await?;
    let mut latest_action_states = BTreeMap::new();
    for row in &rows {
        latest_action_states.insert(row.try_get("state")?, to_u64(row.try_get("n")?));
    }

    let rows = sqlx::query(
        "SELECT COALESCE(failure_code, 'unknown') AS code, COUNT(*) AS n FROM actions \
         WHERE tenant_id = $1 AND state = 'FAILED' AND updated_at >= $2 \
         GROUP BY COALESCE(failure_code, 'unknown') ORDER BY n DESC",
    )
    .bind(tenant.0)
    .bind(now - 24 * 3600 * 1000)
    .fetch_all(&mut *conn)
    .await?;
    let mut failures_24h = Vec::with_capacity(rows.len());
    for row in &rows {
        failures_24h.push((row.try_get("code")?, to_u64(row.try_get("n")?)));
    }

    let stuck = sqlx::query(
        "SELECT COUNT(*) AS n FROM actions WHERE tenant_id = $1 AND state = 'DOWNLOADING' \
         AND updated_at < $2",
    )
    .bind(tenant.0)
    .bind(now - STUCK_MS)
    .fetch_one(&mut *conn)
    .await?;
    Ok(FleetOverview {
        devices,
        latest_action_states,
        versions,
        protocols,
        online,
        never_seen,
        failures_24h,
        stuck_downloads: to_u64(stuck.try_get("n")?),
    })
}
