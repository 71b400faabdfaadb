//! The REST transport: `fetch` to the Upstash endpoint, bounded by the decision's deadline.

use futures_util::future::{select, Either};
use js_sys::futures::JsFuture;
use std::time::Duration;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::worker_sys::web_sys;
use worker::Delay;

use crate::config::Config;
use crate::limiter::{HttpReply, Transport, TransportError};

pub struct Rest<'a> {
    url: &'a str,
    token: &'a str,
    /// Worker-clock time (ms) by which the whole decision must be made.
    deadline_ms: f64,
}

impl<'a> Rest<'a> {
    pub fn new(config: &'a Config, now_ms: f64) -> Self {
        Rest {
            url: &config.redis_url,
            token: &config.redis_token,
            deadline_ms: now_ms + f64::from(config.redis_timeout_ms),
        }
    }

    async fn send(&self, body: String, signal: &web_sys::AbortSignal) -> Result<HttpReply, JsValue> {
        let headers = web_sys::Headers::new()?;
        headers.set("authorization", &format!("Bearer {}", self.token))?;
        headers.set("content-type", "application/json")?;
        let init = web_sys::RequestInit::new();
        init.set_method("POST");
        init.set_headers(&headers);
        init.set_body(&JsValue::from_str(&body));
        init.set_signal(Some(signal));
        let scope: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
        let response: web_sys::Response =
            JsFuture::from(scope.fetch_with_str_and_init(self.url, &init)).await?.dyn_into()?;
        let status = response.status();
        let text = JsFuture::from(response.text()?).await?;
        Ok(HttpReply { status, body: text.as_string().unwrap_or_default() })
    }
}

impl Transport for Rest<'_> {
    async fn pause(&self, ms: u32) -> Result<(), TransportError> {
        let left = self.deadline_ms - js_sys::Date::now();
        if left <= 0.0 {
            return Err(TransportError::Timeout);
        }
        Delay::from(Duration::from_millis(left.min(f64::from(ms)).ceil() as u64)).await;
        Ok(())
    }

    async fn post(&self, body: String) -> Result<HttpReply, TransportError> {
        let left = self.deadline_ms - js_sys::Date::now();
        if left <= 0.0 {
            return Err(TransportError::Timeout);
        }
        let controller = web_sys::AbortController::new().map_err(|_| TransportError::Unreachable)?;
        let signal = controller.signal();
        let send = Box::pin(self.send(body, &signal));
        let timer = Delay::from(Duration::from_millis(left.ceil() as u64));
        let result = match select(send, timer).await {
            Either::Left((result, _)) => result.map_err(|_| TransportError::Unreachable),
            Either::Right(_) => {
                controller.abort();
                Err(TransportError::Timeout)
            }
        };
        result
    }
}
