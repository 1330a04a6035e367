//! The store reaches PostgreSQL over TLS: `sslmode=verify-full` with the server's CA, and
//! `require`; a CA that did not sign the server's certificate is refused.

use sqlx::Row;
use updraft_store::SqlStore;

#[tokio::test]
async fn postgres_over_tls_verifies_the_server() {
    let Some((url, ca)) = updraft_test_support::postgres::fresh_tls_database().await else {
        return;
    };
    for mode in [
        format!("sslmode=verify-full&sslrootcert={}", ca.display()),
        "sslmode=require".to_owned(),
    ] {
        let tls_url = format!("{url}?{mode}");
        SqlStore::open(&tls_url)
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        // The connection really is encrypted.
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&tls_url)
            .await
            .unwrap();
        let row = sqlx::query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert!(row.get::<bool, _>("ssl"), "{mode}");
    }
    // A root that did not sign the server's certificate: refused.
    let other = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let stranger = params.self_signed(&key).unwrap();
    let stranger_pem = other.path().join("stranger.pem");
    std::fs::write(&stranger_pem, stranger.pem()).unwrap();
    let refused = SqlStore::open(&format!(
        "{url}?sslmode=verify-full&sslrootcert={}",
        stranger_pem.display()
    ))
    .await;
    assert!(
        refused.is_err(),
        "a certificate from an unknown CA was accepted"
    );
}
