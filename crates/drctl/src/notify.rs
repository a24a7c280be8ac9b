//! Webhook notifications: a JSON POST. The URL may hold a token, so it never appears in
//! messages; failures are reported as the HTTP status or the transport error only.

use std::time::Duration;

pub async fn post(url: &str, body: &serde_json::Value) -> Result<u16, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("failed to build an HTTP client: {e}"))?;
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).expect("json"))
        .send()
        .await
        .map_err(|e| format!("failed to send the webhook: {}", e.without_url()))?;
    let status = resp.status().as_u16();
    if resp.status().is_success() {
        Ok(status)
    } else {
        Err(format!("the webhook answered HTTP {status}"))
    }
}
