//! The REST transport: `fetch` to the Upstash endpoint, bounded by the decision's deadline.

use js_sys::futures::JsFuture;
use std::cell::RefCell;
use std::time::Duration;
use worker::wasm_bindgen::JsCast;
use worker::Delay;

use super::glue;
use crate::config::Config;
use crate::limiter::{HttpReply, Transport, TransportError};

pub struct Rest<'a> {
    url: &'a str,
    authorization: &'a str,
    /// Worker-clock time (ms) by which the whole decision must be made.
    deadline_ms: f64,
    /// Round-trip times (ms) of the calls made, for the metrics.
    round_trips: RefCell<Vec<f64>>,
}

impl<'a> Rest<'a> {
    pub fn new(config: &'a Config, now_ms: f64) -> Self {
        Rest {
            url: &config.redis_url,
            authorization: config.redis_authorization.expose(),
            deadline_ms: now_ms + f64::from(config.redis_timeout_ms),
            round_trips: RefCell::new(Vec::new()),
        }
    }

    pub fn round_trips(&self) -> Vec<f64> {
        self.round_trips.take()
    }

    async fn send(&self, url: &str, body: &str) -> Result<HttpReply, TransportError> {
        let start = js_sys::Date::now();
        let left = self.deadline_ms - start;
        if left < 1.0 {
            return Err(TransportError::Timeout);
        }
        // AbortSignal.timeout in JS bounds the call: no timer or abort controller crosses into Rust.
        let reply = JsFuture::from(glue::rest_post(url, self.authorization, body, left.ceil()))
            .await
            .map_err(|_| TransportError::Unreachable)?;
        self.round_trips.borrow_mut().push(js_sys::Date::now() - start);
        let reply: js_sys::Array = reply.dyn_into().map_err(|_| TransportError::Unreachable)?;
        match reply.get(0).as_f64().unwrap_or(-1.0) {
            0.0 => Err(TransportError::Timeout),
            status if (100.0..600.0).contains(&status) => {
                Ok(HttpReply { status: status as u16, body: reply.get(1).as_string().unwrap_or_default() })
            }
            _ => Err(TransportError::Unreachable),
        }
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
        self.send(self.url, &body).await
    }

    async fn pipeline(&self, body: String) -> Result<HttpReply, TransportError> {
        self.send(&format!("{}/pipeline", self.url), &body).await
    }
}
