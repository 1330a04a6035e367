//! A new device's rows, inside a caller's transaction (a device created by the API, or a
//! Frugal-IoT node enrolled by its key).

use super::*;

/// Inserts a device with its credentials and queues what its assignments give it, inside the
/// caller's transaction.
pub(crate) async fn insert_device(
    conn: &mut AnyConnection,
    dialect: Dialect,
    tenant: TenantKey,
    new: &NewDevice,
    credentials: &[NewCredential],
) -> StoreResult<Device> {
    let now = now_millis();
    let tags = serde_json::to_string(&new.tags).map_err(corrupt)?;
    let attributes = serde_json::to_string(&new.attributes).map_err(corrupt)?;
    let row = sqlx::query(
        "INSERT INTO devices (tenant_id, device_id, project_id, profile_id, tags, attributes, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(tenant.0)
    .bind(new.id.as_str())
    .bind(new.project.map(|p| p.0))
    .bind(new.profile.map(|p| p.0))
    .bind(tags)
    .bind(attributes)
    .bind(now)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| conflict(e, "device_exists", format!("device {} exists already", new.id)))?;
    let key = DeviceKey(row.try_get("id")?);
    for credential in credentials {
        sqlx::query(
            "INSERT INTO device_credentials (tenant_id, device_pk, kind, secret_hash, gateway, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(tenant.0)
        .bind(key.0)
        .bind(credential.kind.as_str())
        .bind(&credential.secret_hash)
        .bind(i64::from(credential.gateway))
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(|e| conflict(e, "credential_exists", "that credential belongs to another device of this tenant".to_owned()))?;
    }
    join_dynamic(conn, tenant, key).await?;
    reconcile(
        &mut *conn,
        dialect,
        tenant,
        Some(Scope::Device(key)),
        "server",
        Retry::No,
    )
    .await?;
    let row = sqlx::query(&format!("{DEVICE_SELECT} WHERE d.id = $1"))
        .bind(key.0)
        .fetch_one(&mut *conn)
        .await?;
    device_from(&row)
}
