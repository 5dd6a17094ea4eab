//! A fleet of simulated cameras (`blipserve loadtest cameras`): each camera films its own still
//! room (generated: walls, floor, furniture), adds sensor noise to every frame and re-encodes it
//! as JPEG, and sends it with Poisson arrivals; now and then a pet-sized sprite appears, moves or
//! leaves. Because the simulator knows which frames show a changed scene, it can tell what the
//! service's reuse saved and whether it ever answered a changed frame from stored answers (every
//! reused answer names the request that computed it, whose scene version is known). Some reused
//! frames are asked again with `reuse=false`, to compare the reused answers with the model's.
//!
//! One camera may be made loud (`loud_factor` times the others' rate) to see that the others
//! keep their throughput while the loud one gets 429 `camera_rate_limited` with Retry-After.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::Percentiles;
use crate::detect::DetectResponse;

#[derive(Debug, Clone)]
pub struct CameraPlan {
    pub url: String,
    pub cameras: usize,
    /// Frames per second of each camera (Poisson arrivals).
    pub fps: f64,
    pub duration: Duration,
    /// Frame width and height.
    pub size: (usize, usize),
    pub questions: Vec<String>,
    /// Chance that a frame shows a new event (a sprite appears, moves or leaves).
    pub change_probability: f64,
    /// Sprite area as a share of the frame, smallest and largest.
    pub sprite_area: (f64, f64),
    /// `false`: every request says `reuse=false` (the baseline run).
    pub reuse: bool,
    /// Every this many reused frames, one is asked again with `reuse=false` (0: never).
    pub verify_every: usize,
    /// Camera 0 sends at this many times the others' rate (0: it is silent; 1: like the others).
    pub loud_factor: f64,
    pub seed: u64,
    pub timeout: Duration,
    pub api_key: Option<String>,
    pub id_prefix: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Agreement {
    /// Reused frames asked again with `reuse=false`.
    pub frames: u64,
    pub answers: u64,
    /// Same yes/no (or same text) as the model's fresh answer.
    pub same_answer: u64,
    pub max_abs_dp: f64,
    pub mean_abs_dp: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CameraGroup {
    pub cameras: usize,
    pub sent: u64,
    pub ok: u64,
    pub ok_per_s: f64,
    /// Non-200 answers by status and error code (`429 camera_rate_limited`), or `transport`.
    pub errors: BTreeMap<String, u64>,
    /// 429s without Retry-After.
    pub refused_without_retry_after: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CameraReport {
    pub url: String,
    pub cameras: usize,
    pub fps: f64,
    pub elapsed_s: f64,
    pub questions_per_frame: usize,
    /// Frames answered 200 (the verification requests apart).
    pub frames: u64,
    /// Of those, frames whose scene differed from the camera's previous frame.
    pub frames_changed: u64,
    pub answers: u64,
    pub answers_reused: u64,
    /// Frames at least one of whose answers came from the model.
    pub model_calls: u64,
    /// Frames answered entirely from stored answers.
    pub model_calls_saved: u64,
    /// Reused answers computed on another scene than the frame's: must be 0.
    pub changed_answered_from_reuse: u64,
    /// The smallest sprite shown, as a share of the frame.
    pub smallest_sprite: f64,
    pub agreement: Agreement,
    /// Every camera but a loud one.
    pub quiet: CameraGroup,
    /// Camera 0 when `loud_factor` ≠ 1.
    pub loud: Option<CameraGroup>,
    pub latency_ms: Percentiles,
}

/// A small, fast, seeded generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n.max(1)
    }
}

#[derive(Debug, Clone)]
struct Sprite {
    x: usize,
    y: usize,
    w: usize,
    h: usize,
    colour: [u8; 3],
    stripe: [u8; 3],
}

/// One camera's room: a still background, maybe a pet, and a version bumped at every event.
#[derive(Debug, Clone)]
pub struct Scene {
    w: usize,
    h: usize,
    background: Vec<u8>,
    sprite: Option<Sprite>,
    pub version: u64,
    rng: Rng,
    sprite_area: (f64, f64),
    pub smallest_sprite: f64,
}

const PET_COLOURS: [[u8; 3]; 6] =
    [[40, 30, 25], [200, 120, 50], [235, 230, 220], [110, 90, 70], [150, 150, 155], [20, 20, 22]];

impl Scene {
    pub fn new((w, h): (usize, usize), seed: u64, sprite_area: (f64, f64)) -> Scene {
        let mut rng = Rng::new(seed);
        let wall = [120 + rng.below(80), 110 + rng.below(80), 100 + rng.below(80)];
        let floor = [70 + rng.below(60), 50 + rng.below(50), 30 + rng.below(40)];
        let horizon = h * (55 + rng.below(15)) / 100;
        let mut background = vec![0u8; w * h * 3];
        for y in 0..h {
            for x in 0..w {
                let base = if y < horizon { wall } else { floor };
                let shade = 1.0 - 0.25 * ((x as f64 / w as f64) - 0.5).abs() - 0.1 * (y as f64 / h as f64);
                for c in 0..3 {
                    background[(y * w + x) * 3 + c] = (base[c] as f64 * shade).clamp(0.0, 255.0) as u8;
                }
            }
        }
        // Furniture and pictures: flat rectangles.
        for _ in 0..3 + rng.below(4) {
            let (rw, rh) = (w / 10 + rng.below(w / 4), h / 10 + rng.below(h / 4));
            let (x0, y0) = (rng.below(w - rw), rng.below(h - rh));
            let colour = [rng.below(256) as u8, rng.below(256) as u8, rng.below(256) as u8];
            for y in y0..y0 + rh {
                for x in x0..x0 + rw {
                    background[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&colour);
                }
            }
        }
        Scene { w, h, background, sprite: None, version: 0, rng, sprite_area, smallest_sprite: 1.0 }
    }

    fn place(&mut self) -> Sprite {
        let (lo, hi) = self.sprite_area;
        let area = (lo + (hi - lo) * self.rng.unit()) * (self.w * self.h) as f64;
        // Pets are wider than tall.
        let h = (area / 1.6).sqrt().min(self.h as f64 - 1.0) as usize;
        let w = ((area / h as f64) as usize).min(self.w - 1);
        self.smallest_sprite = self.smallest_sprite.min((w * h) as f64 / (self.w * self.h) as f64);
        let colour = PET_COLOURS[self.rng.below(PET_COLOURS.len())];
        let stripe = PET_COLOURS[self.rng.below(PET_COLOURS.len())];
        Sprite { x: self.rng.below(self.w - w), y: self.rng.below(self.h - h), w, h, colour, stripe }
    }

    /// With probability `p`, an event: a pet appears, moves (by at least half its size) or leaves.
    pub fn maybe_change(&mut self, p: f64) {
        if self.rng.unit() >= p {
            return;
        }
        self.sprite = match self.sprite.take() {
            None => Some(self.place()),
            Some(_) if self.rng.unit() < 0.4 => None,
            Some(mut s) => {
                let (dx, dy) = (s.w / 2 + self.rng.below(s.w), s.h / 2 + self.rng.below(s.h));
                s.x = if s.x + s.w + dx < self.w { s.x + dx } else { s.x.saturating_sub(dx) };
                s.y = if s.y + s.h + dy < self.h { s.y + dy } else { s.y.saturating_sub(dy) };
                Some(s)
            }
        };
        self.version += 1;
    }

    /// The scene as the camera sends it: sensor noise on every pixel, JPEG at a varying quality.
    pub fn frame(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut pixels = self.background.clone();
        if let Some(s) = &self.sprite {
            let (cx, cy) = (s.w as f64 / 2.0, s.h as f64 / 2.0);
            for y in 0..s.h {
                for x in 0..s.w {
                    let (dx, dy) = ((x as f64 - cx) / cx, (y as f64 - cy) / cy);
                    if dx * dx + dy * dy <= 1.0 {
                        let colour = if (y / 6) % 2 == 0 { s.colour } else { s.stripe };
                        let i = ((s.y + y) * self.w + s.x + x) * 3;
                        pixels[i..i + 3].copy_from_slice(&colour);
                    }
                }
            }
        }
        for chunk in pixels.chunks_mut(8) {
            let noise = self.rng.next_u64();
            for (i, v) in chunk.iter_mut().enumerate() {
                let n = ((noise >> (i * 8)) & 0xff) as i32 % 9 - 4;
                *v = (*v as i32 + n).clamp(0, 255) as u8;
            }
        }
        let quality = 80 + self.rng.below(11) as i32;
        let image = turbojpeg::Image {
            pixels: pixels.as_slice(),
            width: self.w,
            pitch: self.w * 3,
            height: self.h,
            format: turbojpeg::PixelFormat::RGB,
        };
        Ok(turbojpeg::compress(image, quality, turbojpeg::Subsamp::Sub2x2)?.to_vec())
    }
}

#[derive(Default)]
struct Tally {
    frames: u64,
    frames_changed: u64,
    answers: u64,
    answers_reused: u64,
    model_calls: u64,
    saved: u64,
    misses: u64,
    agreement: Agreement,
    dp_sum: f64,
    quiet: CameraGroup,
    loud: CameraGroup,
    /// The scene version each request id was sent with, by camera.
    versions: HashMap<String, (usize, u64)>,
    reused_frames: u64,
}

struct Shared {
    plan: CameraPlan,
    client: reqwest::Client,
    tally: Mutex<Tally>,
    latency_us: Mutex<Histogram<u64>>,
}

/// Runs the fleet for the plan's duration, then waits for every answer.
pub async fn run(plan: CameraPlan) -> anyhow::Result<CameraReport> {
    anyhow::ensure!(plan.cameras > 0 && plan.fps > 0.0, "at least one camera, sending");
    anyhow::ensure!(!plan.questions.is_empty(), "no questions to ask");
    let client = reqwest::Client::builder().timeout(plan.timeout).pool_max_idle_per_host(1024).build()?;
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        client,
        tally: Mutex::new(Tally::default()),
        latency_us: Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3)?),
    });
    let started = Instant::now();
    let mut cameras = Vec::new();
    for camera in 0..plan.cameras {
        let factor = if camera == 0 { plan.loud_factor } else { 1.0 };
        if factor <= 0.0 {
            continue;
        }
        // A loud camera resends its last frame while its scene holds (a stuck uploader), which
        // also keeps the simulator's own encoding off the server's cores.
        let resend = factor > 1.0;
        cameras.push(tokio::spawn(camera_loop(shared.clone(), camera, plan.fps * factor, resend, started)));
    }
    let mut smallest: f64 = 1.0;
    for c in cameras {
        smallest = smallest.min(c.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let t = shared.tally.lock().unwrap_or_else(|p| p.into_inner());
    let h = shared.latency_us.lock().unwrap_or_else(|p| p.into_inner());
    let group = |g: &CameraGroup, n: usize| CameraGroup { cameras: n, ok_per_s: g.ok as f64 / elapsed, ..g.clone() };
    let mut agreement = t.agreement.clone();
    agreement.mean_abs_dp = if agreement.answers > 0 { t.dp_sum / agreement.answers as f64 } else { 0.0 };
    let loud_is_apart = plan.loud_factor != 1.0;
    Ok(CameraReport {
        url: plan.url.clone(),
        cameras: plan.cameras,
        fps: plan.fps,
        elapsed_s: elapsed,
        questions_per_frame: plan.questions.len(),
        frames: t.frames,
        frames_changed: t.frames_changed,
        answers: t.answers,
        answers_reused: t.answers_reused,
        model_calls: t.model_calls,
        model_calls_saved: t.saved,
        changed_answered_from_reuse: t.misses,
        smallest_sprite: smallest,
        agreement,
        quiet: group(&t.quiet, plan.cameras - usize::from(loud_is_apart)),
        loud: loud_is_apart.then(|| group(&t.loud, 1)),
        latency_ms: Percentiles::of_micros(&h),
    })
}

/// One camera: Poisson arrivals until the plan's end; each frame sent without waiting for the
/// previous answer. Returns the smallest sprite it showed.
async fn camera_loop(
    shared: Arc<Shared>,
    camera: usize,
    fps: f64,
    resend: bool,
    started: Instant,
) -> anyhow::Result<f64> {
    let plan = &shared.plan;
    let mut scene = Scene::new(plan.size, plan.seed.wrapping_add(camera as u64 * 7919), plan.sprite_area);
    let mut rng = Rng::new(plan.seed ^ (camera as u64).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut due = started + Duration::from_secs_f64(rng.unit() / fps);
    let mut sends = Vec::new();
    let mut previous_version: Option<u64> = None;
    let mut last: Option<Vec<u8>> = None;
    let mut n = 0usize;
    while due < started + plan.duration {
        tokio::time::sleep_until(due.into()).await;
        scene.maybe_change(plan.change_probability);
        let version = scene.version;
        let changed = previous_version.is_some_and(|v| v != version);
        previous_version = Some(version);
        let frame = match last.take() {
            Some(frame) if resend && !changed => frame,
            _ => {
                let (frame, back) = tokio::task::spawn_blocking(move || {
                    let frame = scene.frame();
                    (frame, scene)
                })
                .await?;
                scene = back;
                frame?
            }
        };
        if resend {
            last = Some(frame.clone());
        }
        let request_id = format!("{}-c{camera}-{n}", plan.id_prefix);
        n += 1;
        let shared = shared.clone();
        sends.push(tokio::spawn(async move { shared.send(camera, frame, request_id, version, changed).await }));
        // Exponential gaps: a Poisson process of rate `fps`.
        due += Duration::from_secs_f64(-(1.0 - rng.unit()).ln() / fps);
    }
    for s in sends {
        s.await?;
    }
    Ok(scene.smallest_sprite)
}

/// One answer as the simulator reads it.
struct Answered {
    /// `200`, or the status and the error's code (`429 camera_rate_limited`), or the transport
    /// error.
    status: Result<String, String>,
    retry_after: bool,
    body: Option<DetectResponse>,
    latency: Duration,
}

impl Shared {
    async fn post(&self, camera: usize, frame: &[u8], request_id: &str, reuse: bool) -> Answered {
        let plan = &self.plan;
        let part = reqwest::multipart::Part::bytes(frame.to_vec()).file_name("frame.jpg");
        let mut form = reqwest::multipart::Form::new().part("image", part);
        for q in &plan.questions {
            form = form.text("question", q.clone());
        }
        // Named after the run, so that no other run's stored answers are taken for this one's.
        form = form.text("camera", format!("{}-cam{camera}", plan.id_prefix));
        if !reuse {
            form = form.text("reuse", "false");
        }
        let mut request = self.client.post(&plan.url).header("x-request-id", request_id).multipart(form);
        if let Some(key) = &plan.api_key {
            request = request.bearer_auth(key);
        }
        let sent = Instant::now();
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                return Answered { status: Err(e.to_string()), retry_after: false, body: None, latency: sent.elapsed() }
            }
        };
        let status = response.status().as_u16();
        let retry_after = response.headers().contains_key(reqwest::header::RETRY_AFTER);
        let (body, code) = match response.bytes().await {
            Ok(bytes) if status == 200 => (serde_json::from_slice::<DetectResponse>(&bytes).ok(), None),
            Ok(bytes) => (None, serde_json::from_slice::<crate::http::error::ErrorBody>(&bytes).ok().map(|e| e.code)),
            Err(e) => return Answered { status: Err(e.to_string()), retry_after, body: None, latency: sent.elapsed() },
        };
        let status = match (status, &body, code) {
            (200, None, _) => Err("an unreadable 200".into()),
            (status, _, Some(code)) => Ok(format!("{status} {code}")),
            (status, _, None) => Ok(status.to_string()),
        };
        Answered { status, retry_after, body, latency: sent.elapsed() }
    }

    async fn send(&self, camera: usize, frame: Vec<u8>, request_id: String, version: u64, changed: bool) {
        let plan = &self.plan;
        self.tally.lock().unwrap_or_else(|p| p.into_inner()).versions.insert(request_id.clone(), (camera, version));
        let answered = self.post(camera, &frame, &request_id, plan.reuse).await;
        let loud = camera == 0 && plan.loud_factor != 1.0;
        let verify = {
            let mut t = self.tally.lock().unwrap_or_else(|p| p.into_inner());
            let group = if loud { &mut t.loud } else { &mut t.quiet };
            group.sent += 1;
            match &answered.status {
                Ok(status) if status == "200" => group.ok += 1,
                Ok(status) => {
                    *group.errors.entry(status.clone()).or_default() += 1;
                    group.refused_without_retry_after += u64::from(status.starts_with("429") && !answered.retry_after);
                }
                Err(_) => *group.errors.entry("transport".into()).or_default() += 1,
            }
            let Some(body) = &answered.body else { return };
            let _ = self.latency_us.lock().map(|mut h| h.record(answered.latency.as_micros().max(1) as u64));
            t.frames += 1;
            t.frames_changed += u64::from(changed);
            t.answers += body.answers.len() as u64;
            let reused = body.answers.iter().filter(|a| a.reused).count();
            t.answers_reused += reused as u64;
            if reused == body.answers.len() {
                t.saved += 1;
            } else {
                t.model_calls += 1;
            }
            for a in body.answers.iter().filter(|a| a.reused) {
                let source = a.computed_by.as_deref().and_then(|id| t.versions.get(id).copied());
                if source != Some((camera, version)) {
                    t.misses += 1;
                    tracing::warn!(request_id, computed_by = ?a.computed_by, "a changed frame was answered from reuse");
                }
            }
            if reused > 0 {
                t.reused_frames += 1;
            }
            reused > 0 && plan.verify_every > 0 && t.reused_frames.is_multiple_of(plan.verify_every as u64)
        };
        if verify {
            let id = format!("{request_id}-verify");
            self.tally.lock().unwrap_or_else(|p| p.into_inner()).versions.insert(id.clone(), (camera, version));
            let again = self.post(camera, &frame, &id, false).await;
            let (Some(reused), Some(fresh)) = (&answered.body, &again.body) else { return };
            let mut t = self.tally.lock().unwrap_or_else(|p| p.into_inner());
            t.agreement.frames += 1;
            for (r, f) in reused.answers.iter().zip(&fresh.answers).filter(|(r, _)| r.reused) {
                t.agreement.answers += 1;
                t.agreement.same_answer += u64::from(r.answer == f.answer);
                if let (Some(a), Some(b)) = (r.probability, f.probability) {
                    let dp = (a - b).abs();
                    t.agreement.max_abs_dp = t.agreement.max_abs_dp.max(dp);
                    t.dp_sum += dp;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::camera::signature::Signature;
    use crate::frame::ImageLimits;

    /// The simulator and the change detector agree: every event is a change, and frames between
    /// events are not, for sprites down to 2 % of the frame.
    #[test]
    fn every_event_is_seen_and_noise_is_not() {
        let limits = ImageLimits::default();
        let mut scene = Scene::new((640, 360), 7, (0.02, 0.03));
        let mut reference = Signature::of(&scene.frame().unwrap(), &limits).unwrap();
        let (mut events, mut quiet) = (0, 0);
        for _ in 0..120 {
            let before = scene.version;
            scene.maybe_change(0.3);
            let signature = Signature::of(&scene.frame().unwrap(), &limits).unwrap();
            let changed = reference.changed(&signature, 10);
            if scene.version != before {
                events += 1;
                assert!(changed, "event {events}: {:?}", reference.difference(&signature, 10));
            } else {
                quiet += 1;
                assert!(!changed, "noise alone: {:?}", reference.difference(&signature, 10));
            }
            reference = signature;
        }
        assert!(events > 20 && quiet > 50, "{events} events, {quiet} quiet frames");
        assert!(scene.smallest_sprite < 0.025);
    }
}
