//! The acquirer a core talks to, as the config says: the policy of `authorize` around
//! the configured kind of attempt.

use super::simulated::Simulated;
use super::{authorize, AuthorizeRequest, RetryPolicy};
use crate::config::{AcquirerMode, Config};
use crate::payment::Authorization;

pub struct Acquirer {
    policy: RetryPolicy,
    simulated: Simulated,
}

impl Acquirer {
    pub fn new(config: &Config) -> Acquirer {
        // The config refuses `mode = "http"` until the HTTP client is built.
        assert_eq!(config.acquirer.mode, AcquirerMode::Simulated);
        Acquirer {
            policy: RetryPolicy::from_config(&config.acquirer),
            simulated: Simulated {
                latency_ms: config.acquirer.latency_ms,
                jitter_ms: config.acquirer.jitter_ms,
            },
        }
    }

    /// Authorises one payment, retrying as the policy says, to a final answer.
    pub async fn authorize(&self, request: &AuthorizeRequest) -> Authorization {
        let simulated = self.simulated;
        authorize(&self.policy, request, |request, attempt| async move {
            simulated.attempt(request, attempt).await
        })
        .await
    }
}
