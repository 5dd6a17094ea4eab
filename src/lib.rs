//! blipserve answers behaviour questions about pet-camera frames with BLIP visual question
//! answering.
//!
//! The modules follow a request's path: [`model`] turns encoded frames and question text into
//! answers (preprocessing, tokenisation, the three-part BLIP pipeline) on a [`device`] (CPU,
//! CUDA or a NeuronCore).

pub mod device;
pub mod model;
