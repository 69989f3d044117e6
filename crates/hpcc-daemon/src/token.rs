//! The user's cached token for a tenant, as `hpcc login` leaves it.
//! (Interim reader, replaced by `hpcc_daemon::login` when it lands.)

/// The access token cached for `tenant`, or why there is none.
pub fn cached(tenant: &str) -> Result<String, String> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".local/state"))
        })
        .ok_or("no XDG_STATE_HOME or HOME")?;
    let path = base.join("hpcc/tokens").join(format!("{tenant}.json"));
    let text = std::fs::read_to_string(&path).map_err(|error| {
        format!(
            "no token for tenant {tenant} at {} ({error}): run hpcc login",
            path.display()
        )
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))?;
    value["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{}: no access_token", path.display()))
}
