//! A frame's signature for change detection: the frame cut into a grid of about 24 rows of
//! blocks, each summarised by its mean luma, mean chroma (Cb, Cr) and luma spread, one byte each.
//!
//! A JPEG (what cameras send) is decoded at 1/8 scale, inside libjpeg-turbo's inverse DCT: each
//! output pixel is an 8×8 block's average, about 1/30 of a full decode's work, and already
//! free of most sensor noise. Other formats are decoded whole and averaged the same way.
//!
//! Two frames differ when any one block differs by more than a threshold in any of its four
//! values: local, so a pet that fills 2 % of a large still room is a change, while sensor noise
//! and a JPEG re-encoding of the same scene (a fraction of a level in a block's mean) are not.

use std::io::Cursor;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::frame::{self, ImageError, ImageFormat, ImageLimits};

/// Rows of blocks a frame is cut into (columns follow the aspect ratio).
pub const ROWS: usize = 24;
/// Values per block: mean Y, mean Cb, mean Cr, spread of Y.
const VALUES: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The frame's size, from its header.
    pub width: u32,
    pub height: u32,
    pub cols: u16,
    pub rows: u16,
    /// `cols × rows` blocks, row by row, [`VALUES`] bytes each.
    #[serde(with = "base64_bytes")]
    pub blocks: Vec<u8>,
}

/// How two signatures compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Difference {
    /// The largest difference of any value of any block (255 when the sizes differ).
    pub max: u8,
    /// Blocks with a value differing by more than the threshold.
    pub blocks_over: usize,
}

impl Signature {
    /// The signature of an encoded frame, its header checked against `limits` first.
    pub fn of(bytes: &[u8], limits: &ImageLimits) -> Result<Signature, ImageError> {
        match frame::sniff(bytes)? {
            ImageFormat::Jpeg => Self::of_jpeg(bytes, limits),
            other => {
                let (w, h) = frame::image_crate_dimensions(bytes, &other)?;
                frame::check_limits(w as u64, h as u64, limits)?;
                let image = image::ImageReader::with_format(Cursor::new(bytes), frame::crate_format(&other))
                    .decode()
                    .map_err(|e| ImageError::Corrupt { format: other.clone(), message: e.to_string() })?
                    .into_rgb8();
                Ok(Self::of_rgb(image.as_raw(), (w as usize, h as usize), 8, (w, h)))
            }
        }
    }

    fn of_jpeg(bytes: &[u8], limits: &ImageLimits) -> Result<Signature, ImageError> {
        let mut decompressor = frame::jpeg_decompressor()?;
        let header = frame::jpeg_header(&mut decompressor, bytes, limits)?;
        let factor = turbojpeg::ScalingFactor::ONE_EIGHTH;
        decompressor.set_scaling_factor(factor).map_err(frame::jpeg_corrupt)?;
        let scaled = header.scaled(factor);
        let (w, h) = (scaled.width, scaled.height);
        let mut pixels = vec![0u8; w * h * 3];
        let image = turbojpeg::Image {
            pixels: pixels.as_mut_slice(),
            width: w,
            pitch: w * 3,
            height: h,
            format: turbojpeg::PixelFormat::RGB,
        };
        decompressor.decompress(bytes, image).map_err(frame::jpeg_corrupt)?;
        Ok(Self::of_rgb(&pixels, (w, h), 1, (header.width as u32, header.height as u32)))
    }

    /// The signature of RGB pixels `w × h`: a frame of `size` already scaled to 1/8 (`scale`
    /// 1), or at full size (`scale` 8). The grid is the same either way.
    pub fn of_rgb(rgb: &[u8], (w, h): (usize, usize), scale: usize, size: (u32, u32)) -> Signature {
        let scaled_h = h.div_ceil(scale);
        let side = scaled_h.div_ceil(ROWS).max(1) * scale;
        let (cols, rows) = (w.div_ceil(side), h.div_ceil(side));
        let mut sums = vec![[0f64; VALUES + 1]; cols * rows];
        for y in 0..h {
            let row = &rgb[y * w * 3..(y + 1) * w * 3];
            let block_row = (y / side) * cols;
            for (x, p) in row.chunks_exact(3).enumerate() {
                let (r, g, b) = (p[0] as f64, p[1] as f64, p[2] as f64);
                // BT.601, as JPEG stores it.
                let luma = 0.299 * r + 0.587 * g + 0.114 * b;
                let s = &mut sums[block_row + x / side];
                s[0] += luma;
                s[1] += 128.0 - 0.168_736 * r - 0.331_264 * g + 0.5 * b;
                s[2] += 128.0 + 0.5 * r - 0.418_688 * g - 0.081_312 * b;
                s[3] += luma * luma;
                s[4] += 1.0;
            }
        }
        let mut blocks = Vec::with_capacity(cols * rows * VALUES);
        for [y, cb, cr, yy, n] in sums {
            let mean = y / n;
            let spread = (yy / n - mean * mean).max(0.0).sqrt();
            blocks.extend([mean, cb / n, cr / n, spread].map(|v| v.round().clamp(0.0, 255.0) as u8));
        }
        Signature { width: size.0, height: size.1, cols: cols as u16, rows: rows as u16, blocks }
    }

    /// How `self` differs from `other`, counting blocks over `threshold`.
    pub fn difference(&self, other: &Signature, threshold: u8) -> Difference {
        let same_grid = (self.width, self.height, self.cols, self.rows)
            == (other.width, other.height, other.cols, other.rows)
            && self.blocks.len() == other.blocks.len();
        if !same_grid {
            return Difference { max: u8::MAX, blocks_over: self.blocks.len().max(other.blocks.len()) / VALUES };
        }
        let mut max = 0u8;
        let mut blocks_over = 0;
        for (a, b) in self.blocks.chunks_exact(VALUES).zip(other.blocks.chunks_exact(VALUES)) {
            let block = a.iter().zip(b).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0);
            max = max.max(block);
            blocks_over += usize::from(block > threshold);
        }
        Difference { max, blocks_over }
    }

    /// Whether `other` shows a changed scene: any block over `threshold`.
    pub fn changed(&self, other: &Signature, threshold: u8) -> bool {
        self.difference(other, threshold).blocks_over > 0
    }
}

mod base64_bytes {
    use super::*;

    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A still scene: gradients and a few flat shapes.
    fn scene(w: usize, h: usize) -> Vec<u8> {
        let mut rgb = vec![0u8; w * h * 3];
        for y in 0..h {
            for x in 0..w {
                let i = (y * w + x) * 3;
                rgb[i] = (60 + x * 120 / w) as u8;
                rgb[i + 1] = (80 + y * 100 / h) as u8;
                rgb[i + 2] = if (x / 90 + y / 70) % 3 == 0 { 170 } else { 110 };
            }
        }
        rgb
    }

    fn noisy(rgb: &[u8], seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        rgb.iter()
            .map(|&v| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let noise = ((state >> 33) % 9) as i32 - 4;
                (v as i32 + noise).clamp(0, 255) as u8
            })
            .collect()
    }

    fn jpeg(rgb: &[u8], w: usize, h: usize, quality: i32) -> Vec<u8> {
        let image =
            turbojpeg::Image { pixels: rgb, width: w, pitch: w * 3, height: h, format: turbojpeg::PixelFormat::RGB };
        turbojpeg::compress(image, quality, turbojpeg::Subsamp::Sub2x2).unwrap().to_vec()
    }

    fn with_square(rgb: &[u8], w: usize, (x0, y0, side): (usize, usize, usize), colour: [u8; 3]) -> Vec<u8> {
        let mut out = rgb.to_vec();
        for y in y0..y0 + side {
            for x in x0..x0 + side {
                out[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&colour);
            }
        }
        out
    }

    #[test]
    fn noise_and_reencoding_are_not_a_change_and_a_small_pet_is() {
        let (w, h) = (1280, 720);
        let limits = ImageLimits::default();
        let still = scene(w, h);
        let reference = Signature::of(&jpeg(&noisy(&still, 1), w, h, 90), &limits).unwrap();
        assert_eq!((reference.cols, reference.rows, reference.width), (40, 23, 1280));
        for (seed, quality) in [(2, 90), (3, 75), (4, 60)] {
            let again = Signature::of(&jpeg(&noisy(&still, seed), w, h, quality), &limits).unwrap();
            let d = reference.difference(&again, 10);
            eprintln!("noise, quality {quality}: {d:?}");
            assert_eq!(d.blocks_over, 0, "noise and quality {quality}: {d:?}");
        }
        // 2 % of the frame: a 136-pixel square, in a colour close to the wall's luma.
        let side = ((w * h) as f64 * 0.02).sqrt() as usize;
        for (x0, y0) in [(0, 0), (500, 300), (w - side, h - side)] {
            let pet = with_square(&still, w, (x0, y0, side), [150, 120, 90]);
            let seen = Signature::of(&jpeg(&noisy(&pet, 9), w, h, 80), &limits).unwrap();
            eprintln!("a pet at {x0},{y0}: {:?}", reference.difference(&seen, 10));
            assert!(reference.changed(&seen, 10), "a pet at {x0},{y0}: {:?}", reference.difference(&seen, 10));
        }
    }

    #[test]
    fn other_formats_and_sizes() {
        let (w, h) = (320, 240);
        let still = scene(w, h);
        let mut png = Vec::new();
        image::RgbImage::from_raw(w as u32, h as u32, still.clone())
            .unwrap()
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let limits = ImageLimits::default();
        let from_png = Signature::of(&png, &limits).unwrap();
        let from_jpeg = Signature::of(&jpeg(&still, w, h, 95), &limits).unwrap();
        assert_eq!((from_png.cols, from_png.rows), (from_jpeg.cols, from_jpeg.rows));
        assert!(!from_png.changed(&from_jpeg, 10), "{:?}", from_png.difference(&from_jpeg, 10));
        let bigger = Signature::of(&jpeg(&scene(640, 480), 640, 480, 95), &limits).unwrap();
        assert!(from_jpeg.changed(&bigger, 10), "another size is another scene");
        assert!(Signature::of(b"\xff\xd8\xffgarbage", &limits).is_err());
        let json = serde_json::to_string(&from_png).unwrap();
        assert_eq!(serde_json::from_str::<Signature>(&json).unwrap(), from_png);
    }
}
