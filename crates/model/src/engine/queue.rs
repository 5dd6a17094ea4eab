//! The engine's queue: bounded, with one lane per camera (requests that name none share one
//! lane), served round-robin, so that a camera with many frames waiting does not delay the
//! others' by more than one frame per turn. Optionally a camera may hold at most a few frames in
//! the queue: a newer frame then supersedes its oldest waiting one (for a live stream the newest
//! frame is the one worth answering).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::{Job, SubmitError};

pub(super) struct FairQueue {
    lanes: Mutex<Lanes>,
    ready: Condvar,
    capacity: usize,
    /// Frames one camera may have waiting; 0: no bound but the queue's.
    per_camera: usize,
}

#[derive(Default)]
struct Lanes {
    /// In turn order: the front lane gives the next job, then goes to the back.
    order: VecDeque<Lane>,
    len: usize,
    closed: bool,
}

struct Lane {
    camera: Option<Arc<str>>,
    jobs: VecDeque<Job>,
}

/// What [`FairQueue::pop`] found.
pub(super) enum Pop {
    Job(Job),
    /// Nothing arrived in time.
    Empty,
    /// Closed and drained: shutting down.
    Closed,
}

impl FairQueue {
    pub(super) fn new(capacity: usize, per_camera: usize) -> FairQueue {
        FairQueue { lanes: Mutex::new(Lanes::default()), ready: Condvar::new(), capacity: capacity.max(1), per_camera }
    }

    /// Queues `job`; returns the job it superseded, if any.
    pub(super) fn push(&self, job: Job) -> Result<Option<Job>, SubmitError> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        if lanes.closed {
            return Err(SubmitError::ShuttingDown);
        }
        let position = lanes.order.iter().position(|lane| lane.camera == job.camera);
        if let (Some(i), Some(_), true) = (position, &job.camera, self.per_camera > 0) {
            let lane = &mut lanes.order[i];
            if lane.jobs.len() >= self.per_camera {
                let superseded = lane.jobs.pop_front();
                lane.jobs.push_back(job);
                return Ok(superseded);
            }
        }
        if lanes.len >= self.capacity {
            return Err(SubmitError::QueueFull);
        }
        match position {
            Some(i) => lanes.order[i].jobs.push_back(job),
            None => lanes.order.push_back(Lane { camera: job.camera.clone(), jobs: VecDeque::from([job]) }),
        }
        lanes.len += 1;
        drop(lanes);
        self.ready.notify_one();
        Ok(None)
    }

    /// The next job in turn, waiting for one until `until` (`None`: as long as it takes).
    pub(super) fn pop(&self, until: Option<Instant>) -> Pop {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(mut lane) = lanes.order.pop_front() {
                let job = lane.jobs.pop_front().expect("lanes in the order are never empty");
                if !lane.jobs.is_empty() {
                    lanes.order.push_back(lane);
                }
                lanes.len -= 1;
                return Pop::Job(job);
            }
            if lanes.closed {
                return Pop::Closed;
            }
            lanes = match until {
                None => self.ready.wait(lanes).unwrap_or_else(|p| p.into_inner()),
                Some(until) => {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Pop::Empty;
                    }
                    self.ready.wait_timeout(lanes, left).unwrap_or_else(|p| p.into_inner()).0
                }
            };
        }
    }

    /// No more jobs are taken; those queued are still handed out.
    pub(super) fn close(&self) {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::{EngineError, JobResult};
    use crate::model::{AnswerMode, Pixels};

    type Reply = tokio::sync::oneshot::Receiver<Result<JobResult, EngineError>>;

    fn job(camera: Option<&str>, n: usize) -> (Job, Reply) {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            pixels: Pixels { height: 1, width: 1, values: vec![n as f32] },
            questions: Vec::new(),
            mode: AnswerMode::YesNo,
            deadline: Instant::now() + Duration::from_secs(60),
            enqueued: Instant::now(),
            camera: camera.map(Arc::from),
            reply,
        };
        (job, rx)
    }

    fn camera_of(pop: Pop) -> Option<String> {
        match pop {
            Pop::Job(job) => job.camera.map(|c| c.to_string()),
            _ => panic!("expected a job"),
        }
    }

    #[test]
    fn lanes_take_turns_and_a_full_queue_refuses() {
        let q = FairQueue::new(6, 0);
        for c in ["loud", "loud", "loud", "loud", "a", "b"] {
            assert!(q.push(job(Some(c), 0).0).unwrap().is_none());
        }
        assert_eq!(q.push(job(Some("c"), 0).0).err(), Some(SubmitError::QueueFull));
        let order: Vec<_> = (0..6).map(|_| camera_of(q.pop(None)).unwrap()).collect();
        assert_eq!(order, ["loud", "a", "b", "loud", "loud", "loud"]);
        assert!(matches!(q.pop(Some(Instant::now() + Duration::from_millis(10))), Pop::Empty));
        q.close();
        assert!(matches!(q.pop(None), Pop::Closed));
        assert_eq!(q.push(job(None, 0).0).err(), Some(SubmitError::ShuttingDown));
    }

    #[test]
    fn a_newer_frame_supersedes_the_oldest_of_its_camera() {
        let q = FairQueue::new(8, 1);
        let (first, _rx) = job(Some("cam"), 1);
        assert!(q.push(first).unwrap().is_none());
        let superseded = q.push(job(Some("cam"), 2).0).unwrap().expect("the older frame is handed back");
        assert_eq!(superseded.pixels.values[0], 1.0);
        // Requests without a camera are never superseded.
        assert!(q.push(job(None, 3).0).unwrap().is_none());
        assert!(q.push(job(None, 4).0).unwrap().is_none());
        let Pop::Job(next) = q.pop(None) else { panic!() };
        assert_eq!(next.pixels.values[0], 2.0);
    }
}
