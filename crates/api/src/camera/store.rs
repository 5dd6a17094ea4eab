//! Where a camera's state and rate bucket live: this process's memory, or Redis (shared by a
//! fleet). Every call is bounded by the caller's timeout; a store that fails or is slow is
//! reported as [`StoreError`] and the request goes on without it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

use super::signature::Signature;
use super::CameraId;

/// What a camera's last answered frame left behind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CameraState {
    /// The frame the answers were computed on.
    pub signature: Signature,
    /// The model that answered.
    pub model: String,
    /// By answer key (the mode, and the question or behaviour).
    pub answers: BTreeMap<String, StoredAnswer>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredAnswer {
    pub question: String,
    pub answer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected: Option<bool>,
    /// When it was computed, in ms since the Unix epoch (a fleet shares the clock, not Instants).
    pub at_ms: u64,
    /// The request that computed it.
    pub request_id: String,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A token bucket's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Over the rate: a token is due in this long.
    No {
        retry_after: Duration,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the camera store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the camera store is unavailable: {0}")]
    Unavailable(String),
    #[error("the camera store holds a state that does not parse: {0}")]
    Corrupt(String),
}

/// `--camera-store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Memory,
    Redis(String),
}

impl Location {
    pub fn parse(text: &str) -> anyhow::Result<Location> {
        match text.trim() {
            "memory" | "" => Ok(Location::Memory),
            url if url.starts_with("redis://") || url.starts_with("rediss://") => {
                redis::Client::open(url).map_err(|e| anyhow::anyhow!("--camera-store {url}: {e}"))?;
                Ok(Location::Redis(url.to_string()))
            }
            other => anyhow::bail!("--camera-store {other:?}: use `memory` or a redis:// URL"),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Location::Memory => "memory".into(),
            // The URL may hold a password.
            Location::Redis(_) => "redis".into(),
        }
    }
}

pub enum Store {
    Memory(Memory),
    Redis(RedisStore),
}

impl Store {
    pub fn open(location: &Location, timeout: Duration) -> anyhow::Result<Store> {
        Ok(match location {
            Location::Memory => Store::Memory(Memory::default()),
            Location::Redis(url) => Store::Redis(RedisStore::new(url, timeout)?),
        })
    }

    pub async fn get(&self, camera: &CameraId) -> Result<Option<CameraState>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.get(camera)),
            Store::Redis(r) => r.get(camera).await,
        }
    }

    /// Stores `state`, forgotten after `ttl`.
    pub async fn put(&self, camera: &CameraId, state: &CameraState, ttl: Duration) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.put(camera, state.clone(), ttl);
                Ok(())
            }
            Store::Redis(r) => r.put(camera, state, ttl).await,
        }
    }

    /// Takes a token from the camera's bucket (`rate` per second, `burst` at most).
    pub async fn admit(&self, camera: &CameraId, rate: f64, burst: u32) -> Result<Admit, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.admit(camera, rate, burst)),
            Store::Redis(r) => r.admit(camera, rate, burst).await,
        }
    }
}

/// Cameras remembered in memory at most; past it, expired entries are swept, and a new camera is
/// not remembered until there is room (its frames go to the model).
const MEMORY_CAMERAS: usize = 200_000;

#[derive(Default)]
pub struct Memory {
    states: Mutex<HashMap<CameraId, (Instant, CameraState)>>,
    buckets: Mutex<HashMap<CameraId, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Memory {
    fn get(&self, camera: &CameraId) -> Option<CameraState> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.get(camera).filter(|(expires, _)| *expires > Instant::now()).map(|(_, state)| state.clone())
    }

    fn put(&self, camera: &CameraId, state: CameraState, ttl: Duration) {
        let now = Instant::now();
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if states.len() >= MEMORY_CAMERAS && !states.contains_key(camera) {
            states.retain(|_, (expires, _)| *expires > now);
            if states.len() >= MEMORY_CAMERAS {
                return;
            }
        }
        states.insert(camera.clone(), (now + ttl, state));
    }

    fn admit(&self, camera: &CameraId, rate: f64, burst: u32) -> Admit {
        let now = Instant::now();
        let burst = burst as f64;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MEMORY_CAMERAS && !buckets.contains_key(camera) {
            // A bucket refilled to the brim is the same as none.
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(camera.clone()).or_insert(Bucket { tokens: burst, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Admit::Yes
        } else {
            Admit::No { retry_after: Duration::from_secs_f64((1.0 - bucket.tokens) / rate) }
        }
    }
}

/// The token bucket in Redis, one atomic script per frame: refill by the time elapsed on Redis's
/// clock (one clock for the whole fleet), take a token or say when one is due. Returns
/// `{1, 0}` or `{0, ms until a token}`.
const BUCKET_SCRIPT: &str = r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait}
";

/// How long after a failed connection the next attempt waits: a down Redis costs one refused
/// connection a second, not one per request.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

pub struct RedisStore {
    client: redis::Client,
    timeout: Duration,
    /// Connected once, then reconnecting by itself; `None` until the first connection succeeds.
    connection: tokio::sync::Mutex<(Option<ConnectionManager>, Option<Instant>)>,
    bucket: redis::Script,
}

impl RedisStore {
    fn new(url: &str, timeout: Duration) -> anyhow::Result<RedisStore> {
        Ok(RedisStore {
            client: redis::Client::open(url)?,
            timeout,
            connection: tokio::sync::Mutex::new((None, None)),
            bucket: redis::Script::new(BUCKET_SCRIPT),
        })
    }

    fn key(camera: &CameraId, what: &str) -> String {
        format!("blipserve:camera:{{{camera}}}:{what}")
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let mut guard = self.connection.lock().await;
        if let Some(connection) = &guard.0 {
            return Ok(connection.clone());
        }
        if guard.1.is_some_and(|at| at.elapsed() < RECONNECT_EVERY) {
            return Err(StoreError::Unavailable("not connected (retrying every second)".into()));
        }
        guard.1 = Some(Instant::now());
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1)
            .set_max_delay(1_000);
        match tokio::time::timeout(self.timeout, ConnectionManager::new_with_config(self.client.clone(), config)).await
        {
            Ok(Ok(connection)) => {
                guard.0 = Some(connection.clone());
                Ok(connection)
            }
            Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    async fn get(&self, camera: &CameraId) -> Result<Option<CameraState>, StoreError> {
        let mut connection = self.connection().await?;
        let cmd = redis::cmd("GET").arg(Self::key(camera, "state")).clone();
        let text: Option<String> = self.bounded(cmd.query_async(&mut connection)).await?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.to_string()))).transpose()
    }

    async fn put(&self, camera: &CameraId, state: &CameraState, ttl: Duration) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let text = serde_json::to_string(state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let cmd = redis::cmd("SET")
            .arg(Self::key(camera, "state"))
            .arg(text)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .clone();
        self.bounded(cmd.query_async::<()>(&mut connection)).await
    }

    async fn admit(&self, camera: &CameraId, rate: f64, burst: u32) -> Result<Admit, StoreError> {
        let mut connection = self.connection().await?;
        let mut invocation = self.bucket.key(Self::key(camera, "bucket"));
        invocation.arg(rate).arg(burst);
        let (allowed, wait_ms): (i64, i64) = self.bounded(invocation.invoke_async(&mut connection)).await?;
        Ok(if allowed == 1 {
            Admit::Yes
        } else {
            Admit::No { retry_after: Duration::from_millis(wait_ms.max(1) as u64) }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_bucket_allows_its_burst_then_its_rate() {
        let memory = Memory::default();
        let camera = CameraId::parse("c").unwrap();
        let other = CameraId::parse("d").unwrap();
        for _ in 0..3 {
            assert_eq!(memory.admit(&camera, 2.0, 3), Admit::Yes);
        }
        let Admit::No { retry_after } = memory.admit(&camera, 2.0, 3) else { panic!("over the burst") };
        assert!(
            retry_after > Duration::from_millis(400) && retry_after <= Duration::from_millis(500),
            "{retry_after:?}"
        );
        assert_eq!(memory.admit(&other, 2.0, 3), Admit::Yes, "another camera has its own bucket");
        std::thread::sleep(Duration::from_millis(520));
        assert_eq!(memory.admit(&camera, 2.0, 3), Admit::Yes, "refilled at the rate");
    }

    #[test]
    fn locations_parse() {
        assert_eq!(Location::parse("memory").unwrap(), Location::Memory);
        assert!(matches!(Location::parse("redis://127.0.0.1:6379/0").unwrap(), Location::Redis(_)));
        assert!(Location::parse("memcached://x").is_err());
        assert_eq!(Location::parse("redis://:secret@h:1").unwrap().describe(), "redis");
    }
}
