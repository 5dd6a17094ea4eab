//! Frame preprocessing as BLIP's image processor does it (transformers' PIL path): decode,
//! convert to RGB, bicubic resize to the manifest's size, rescale, normalise, channels first.

mod decode;
mod resize;

pub use blipserve_api::frame::{check_header, sniff, ImageError, ImageFormat, ImageLimits};
pub use decode::decode;
pub use resize::resize_bicubic;

use super::manifest::PreprocessSpec;

/// 8-bit RGB pixels, row-major, interleaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// A preprocessed frame: float32 `[3, height, width]`, channels first, ready for the image
/// encoder. Plain memory rather than a tensor: preprocessing runs on the server's blocking
/// threads, and a libtorch call there starts an OpenMP thread team of its own, whose threads then
/// spin for cores the model replicas are using. The replica makes the tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Pixels {
    pub height: usize,
    pub width: usize,
    pub values: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct Preprocessor {
    height: u32,
    width: u32,
    rescale: f64,
    mean: [f32; 3],
    std: [f32; 3],
    limits: ImageLimits,
}

impl Preprocessor {
    pub fn new(spec: &PreprocessSpec, limits: ImageLimits) -> Preprocessor {
        Preprocessor {
            height: spec.size[0],
            width: spec.size[1],
            rescale: spec.rescale,
            mean: spec.mean.map(|m| m as f32),
            std: spec.std.map(|s| s as f32),
            limits,
        }
    }

    /// Decoded and resized, before rescaling: what the parity tests compare with Pillow.
    pub fn resized(&self, bytes: &[u8]) -> Result<RgbImage, ImageError> {
        let rgb = decode(bytes, &self.limits)?;
        Ok(resize_bicubic(&rgb, self.width, self.height))
    }

    /// The image encoder's input for one encoded frame.
    pub fn pixels(&self, bytes: &[u8]) -> Result<Pixels, ImageError> {
        Ok(self.normalize(&self.resized(bytes)?))
    }

    /// Rescale (in float64, then float32, as transformers does) and normalise, channels first.
    pub fn normalize(&self, img: &RgbImage) -> Pixels {
        let plane = img.width as usize * img.height as usize;
        let mut chw = vec![0f32; 3 * plane];
        for (i, px) in img.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                let scaled = (px[c] as f64 * self.rescale) as f32;
                chw[c * plane + i] = (scaled - self.mean[c]) / self.std[c];
            }
        }
        Pixels { height: img.height as usize, width: img.width as usize, values: chw }
    }
}
