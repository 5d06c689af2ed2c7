//! A LongPoll client as phoenix.js's LongPoll transport speaks: a `GET` with the app's params
//! opens a session (`{"status":410,"token":…}`), then `GET`s with the session's token poll for
//! messages (`200` with them, `204` after the server's poll window) while `POST`s send frames
//! one at a time. The protocol status is in the JSON body; HTTP always answers 200.

use serde_json::Value;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A poll the server holds longer than this is an error (its window is at most 19 s).
const POLL_TIMEOUT: Duration = Duration::from_secs(30);

/// One LongPoll session. Dropping it stops its polling at once, as a closed tab would: the
/// server ends the session after its window without a poll.
pub struct LongPoll {
    http: reqwest::Client,
    /// `http://host:port/<mount>/longpoll?<app params>`, to which `&token=<session>` is added.
    url: String,
    token: String,
    inbox: mpsc::UnboundedReceiver<Result<String, String>>,
    poller: JoinHandle<()>,
}

impl LongPoll {
    /// Opens a session at `url` (the longpoll endpoint with the app's query string).
    pub async fn open(http: &reqwest::Client, url: String) -> Result<LongPoll, String> {
        let body = request(http.get(&url)).await?;
        let token = match (status(&body), body["token"].as_str()) {
            (Some(410), Some(t)) => t.to_owned(),
            _ => return Err(format!("longpoll open answered {body}")),
        };
        let (tx, inbox) = mpsc::unbounded_channel();
        let poll_url = format!("{url}&token={token}");
        let poller = tokio::spawn(poll(http.clone(), poll_url, tx));
        Ok(LongPoll {
            http: http.clone(),
            url,
            token,
            inbox,
            poller,
        })
    }

    /// Sends one frame; `Ok` once the server has handled it (`{"status":200}`).
    pub async fn send(&self, frame: &str) -> Result<(), String> {
        let body = self.post(frame).await?;
        match status(&body) {
            Some(200) => Ok(()),
            _ => Err(format!("longpoll send answered {body}")),
        }
    }

    /// A `POST` with this session's token; the answer's body.
    pub async fn post(&self, frame: &str) -> Result<Value, String> {
        let req = (self.http.post(format!("{}&token={}", self.url, self.token)))
            .header("content-type", "application/json")
            .body(frame.to_owned());
        request(req).await
    }

    /// Stops polling; the session's token stays usable for [`LongPoll::post`].
    pub fn stop_polling(&mut self) {
        self.poller.abort();
    }

    /// The next message the server sent, or why the session is over.
    pub async fn next(&mut self) -> Result<String, String> {
        match self.inbox.recv().await {
            Some(m) => m,
            None => Err("longpoll: polling stopped".into()),
        }
    }
}

impl Drop for LongPoll {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// Polls until the session ends or a poll fails, handing each message on in order.
async fn poll(
    http: reqwest::Client,
    url: String,
    tx: mpsc::UnboundedSender<Result<String, String>>,
) {
    loop {
        let body = match request(http.get(&url)).await {
            Ok(b) => b,
            Err(why) => {
                let _ = tx.send(Err(why));
                return;
            }
        };
        match status(&body) {
            Some(200) => {
                for m in body["messages"].as_array().into_iter().flatten() {
                    let Some(m) = m.as_str() else { continue };
                    if tx.send(Ok(m.to_owned())).is_err() {
                        return;
                    }
                }
            }
            Some(204) => {}
            // 410: the session is gone (the server made a new one, which this client drops).
            _ => {
                let _ = tx.send(Err(format!("longpoll poll answered {body}")));
                return;
            }
        }
    }
}

async fn request(req: reqwest::RequestBuilder) -> Result<Value, String> {
    let res = req
        .timeout(POLL_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("longpoll: {e}"))?;
    let code = res.status();
    let text = res.text().await.map_err(|e| format!("longpoll: {e}"))?;
    if !code.is_success() {
        return Err(format!("longpoll: HTTP {code} {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("longpoll: {e}: {text}"))
}

fn status(body: &Value) -> Option<u64> {
    body["status"].as_u64()
}
