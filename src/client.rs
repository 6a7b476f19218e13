//! A blocking client of the control API, used by the CLI.
//!
//! The CLI is deliberately thin: everything it shows comes from the daemon through this client,
//! so scripts that call the HTTP API directly see exactly what the CLI sees.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::Config;
use crate::home::{Home, HomeError};

/// How long the CLI waits for the daemon before giving up.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a CLI command could not talk to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The home is missing or broken.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The config is broken.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Nothing answers at the API address.
    #[error("no meshsync daemon is running for home {home} (nothing answers at {addr}); start one with `meshsync --home {home} run`", home = .home.display())]
    NotRunning {
        /// The home.
        home: PathBuf,
        /// Where we looked.
        addr: String,
    },
    /// The daemon refused our token.
    #[error("the daemon at {addr} refused the API token from {token_file}", token_file = .token_file.display())]
    Unauthorized {
        /// The API address.
        addr: SocketAddr,
        /// The token file we used.
        token_file: PathBuf,
    },
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The daemon's message.
        message: String,
    },
    /// The answer did not parse.
    #[error("unexpected answer from the daemon at {addr}: {message}")]
    BadAnswer {
        /// The API address.
        addr: SocketAddr,
        /// What was wrong.
        message: String,
    },
}

/// A connection to one daemon's API.
#[derive(Debug)]
pub struct ApiClient {
    home: Home,
    addr: SocketAddr,
    token: String,
    agent: ureq::Agent,
}

impl ApiClient {
    /// The link that opens the daemon's status page already holding the token (in the URL's
    /// fragment, which the browser keeps to itself).
    pub fn page_link(&self) -> String {
        format!("http://{}/#token={}", self.addr, self.token)
    }

    /// Finds the API of the daemon running for `home`: the address it wrote at start if there
    /// is one, else the configured one.
    pub fn for_home(home: &Home) -> Result<ApiClient, ClientError> {
        home.ensure_initialised()?;
        let token = home.load_token()?;
        let addr = match home.read_api_addr() {
            Some(addr) => addr,
            None => {
                let config = Config::load(&home.config_path())?;
                if config.api.port() == 0 {
                    return Err(ClientError::NotRunning {
                        home: home.dir().to_owned(),
                        addr: format!(
                            "{} (port chosen at start; no {} file)",
                            config.api,
                            crate::home::API_ADDR_FILE
                        ),
                    });
                }
                config.api
            }
        };
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(CLIENT_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(ApiClient {
            home: home.clone(),
            addr,
            token,
            agent,
        })
    }

    /// The API address in use.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET path`, decoding JSON.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response = self
            .agent
            .get(format!("http://{}{path}", self.addr))
            .header("Authorization", format!("Bearer {}", self.token))
            .call();
        self.decode(response)
    }

    /// `POST path` with a JSON body, decoding JSON.
    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let response = self
            .agent
            .post(format!("http://{}{path}", self.addr))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_json(body);
        self.decode(response)
    }

    /// `GET path` of a streamed answer of JSON lines; calls `on_line` for each until the daemon
    /// closes the stream or `on_line` returns false.
    pub fn stream_lines(
        &self,
        path: &str,
        mut on_line: impl FnMut(&str) -> bool,
    ) -> Result<(), ClientError> {
        use std::io::BufRead;
        // No overall timeout: a watch runs until stopped.
        let Some(mut response) = self.get_untimed(path)? else {
            return Ok(());
        };
        let reader = std::io::BufReader::new(response.body_mut().as_reader());
        for line in reader.lines() {
            let line = line.map_err(|e| ClientError::BadAnswer {
                addr: self.addr,
                message: e.to_string(),
            })?;
            if !on_line(&line) {
                break;
            }
        }
        Ok(())
    }

    /// `GET path` of an answer that is a JSON array, however long: `on_item` is called with
    /// each element as it is read, none held after it (a listing of 10^7 records is gigabytes
    /// of JSON). No overall timeout: the answer takes as long as it is.
    pub fn get_each<T: DeserializeOwned>(
        &self,
        path: &str,
        on_item: impl FnMut(T) -> std::io::Result<()>,
    ) -> Result<(), ClientError> {
        use serde::Deserializer as _;
        let Some(mut response) = self.get_untimed(path)? else {
            return Ok(());
        };
        let reader = std::io::BufReader::new(response.body_mut().as_reader());
        let mut items = serde_json::Deserializer::from_reader(reader);
        items
            .deserialize_seq(EachItem {
                on_item,
                item: std::marker::PhantomData,
            })
            .map_err(|e| ClientError::BadAnswer {
                addr: self.addr,
                message: e.to_string(),
            })
    }

    /// `GET path` with no overall timeout, for answers read as they arrive: the response if the
    /// daemon answered 200; its error otherwise (`None` if that answer decoded as no error).
    fn get_untimed(
        &self,
        path: &str,
    ) -> Result<Option<ureq::http::Response<ureq::Body>>, ClientError> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let response = agent
            .get(format!("http://{}{path}", self.addr))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .map_err(|_| ClientError::NotRunning {
                home: self.home.dir().to_owned(),
                addr: self.addr.to_string(),
            })?;
        if response.status().as_u16() != 200 {
            return self.decode::<serde_json::Value>(Ok(response)).map(|_| None);
        }
        Ok(Some(response))
    }

    fn decode<T: DeserializeOwned>(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, ClientError> {
        let mut response = response.map_err(|_| ClientError::NotRunning {
            home: self.home.dir().to_owned(),
            addr: self.addr.to_string(),
        })?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| ClientError::BadAnswer {
                addr: self.addr,
                message: e.to_string(),
            })?;
        match status {
            200..=299 => serde_json::from_str(&body).map_err(|e| ClientError::BadAnswer {
                addr: self.addr,
                message: e.to_string(),
            }),
            401 => Err(ClientError::Unauthorized {
                addr: self.addr,
                token_file: self.home.token_path(),
            }),
            _ => {
                let message = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
                    .unwrap_or(body);
                Err(ClientError::Api { status, message })
            }
        }
    }
}

/// Reads a JSON array element by element for [`ApiClient::get_each`].
struct EachItem<T, F> {
    on_item: F,
    item: std::marker::PhantomData<T>,
}

impl<'de, T, F> serde::de::Visitor<'de> for EachItem<T, F>
where
    T: serde::Deserialize<'de>,
    F: FnMut(T) -> std::io::Result<()>,
{
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut items: A) -> Result<(), A::Error> {
        while let Some(item) = items.next_element::<T>()? {
            (self.on_item)(item).map_err(serde::de::Error::custom)?;
        }
        Ok(())
    }
}
