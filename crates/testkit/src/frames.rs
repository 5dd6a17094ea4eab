//! Synthetic camera frames, generated here rather than stored, and their encodings: JPEG
//! (libjpeg-turbo, as the service decodes), PNG in several colour modes, and a PNG whose header
//! claims more pixels than it holds. [`Frame`] is plain RGB so no test helper needs the model
//! crate.

/// Chroma subsampling of [`jpeg`] (re-exported so tests need no `turbojpeg` of their own).
pub use turbojpeg::Subsamp;

/// An 8-bit RGB image, rows top to bottom, `width * height * 3` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// A deterministic, photo-like frame: smooth shading, hard-edged objects and sensor noise, so
/// resampling meets both flat areas and sharp transitions.
pub fn synthetic_frame(width: u32, height: u32, seed: u32) -> Frame {
    let mut data = Vec::with_capacity((width * height * 3) as usize);
    let s = seed as f32;
    for y in 0..height {
        for x in 0..width {
            let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
            let noise = (hash(x, y, seed) % 25) as f32 - 12.0;
            let mut rgb = [
                110.0 + 90.0 * (fx * 6.0 + s).sin() + noise,
                120.0 + 80.0 * (fy * 5.0 - s * 0.5).cos() + noise,
                100.0 + 70.0 * ((fx + fy) * 9.0 + s).sin() + noise,
            ];
            // A "pet": an ellipse with its own colour and a hard edge.
            let (dx, dy) = ((fx - 0.6) / 0.22, (fy - 0.55) / 0.15);
            if dx * dx + dy * dy < 1.0 {
                rgb = [160.0 + noise, 110.0 + noise, 60.0 + noise];
            }
            // A "sofa": a dark rectangle.
            if fx > 0.08 && fx < 0.45 && fy > 0.4 && fy < 0.75 {
                rgb = [50.0 + noise, 70.0 + noise, 120.0 + noise];
            }
            data.extend(rgb.map(|v| v.clamp(0.0, 255.0) as u8));
        }
    }
    Frame { width, height, data }
}

fn hash(x: u32, y: u32, seed: u32) -> u32 {
    let mut h = x.wrapping_mul(0x9E37_79B1) ^ y.wrapping_mul(0x85EB_CA77) ^ seed.wrapping_mul(0xC2B2_AE3D);
    h ^= h >> 15;
    h = h.wrapping_mul(0x2C1B_3C6D);
    h ^ (h >> 12)
}

/// A baseline JPEG of the frame at `quality` (1–100).
pub fn jpeg(img: &Frame, quality: i32, subsamp: Subsamp) -> Vec<u8> {
    let image = turbojpeg::Image {
        pixels: img.data.as_slice(),
        width: img.width as usize,
        pitch: img.width as usize * 3,
        height: img.height as usize,
        format: turbojpeg::PixelFormat::RGB,
    };
    turbojpeg::compress(image, quality, subsamp).expect("encode JPEG").to_vec()
}

/// A greyscale JPEG of the frame's green channel.
pub fn grey_jpeg(img: &Frame, quality: i32) -> Vec<u8> {
    let grey: Vec<u8> = img.data.chunks(3).map(|p| p[1]).collect();
    let image = turbojpeg::Image {
        pixels: grey.as_slice(),
        width: img.width as usize,
        pitch: img.width as usize,
        height: img.height as usize,
        format: turbojpeg::PixelFormat::GRAY,
    };
    turbojpeg::compress(image, quality, turbojpeg::Subsamp::Gray).expect("encode JPEG").to_vec()
}

pub fn png(img: image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).expect("encode PNG");
    out.into_inner()
}

pub fn rgb_png(img: &Frame) -> Vec<u8> {
    png(image::DynamicImage::ImageRgb8(
        image::RgbImage::from_raw(img.width, img.height, img.data.clone()).expect("buffer size"),
    ))
}

/// RGBA with a varying alpha: PIL's convert("RGB") drops it, so must we.
pub fn rgba_png(img: &Frame) -> Vec<u8> {
    let data: Vec<u8> =
        img.data.chunks(3).enumerate().flat_map(|(i, p)| [p[0], p[1], p[2], (i * 7 % 256) as u8]).collect();
    png(image::DynamicImage::ImageRgba8(image::RgbaImage::from_raw(img.width, img.height, data).expect("buffer")))
}

/// A greyscale PNG of the frame's red channel.
pub fn grey_png(img: &Frame) -> Vec<u8> {
    let data: Vec<u8> = img.data.chunks(3).map(|p| p[0]).collect();
    png(image::DynamicImage::ImageLuma8(image::GrayImage::from_raw(img.width, img.height, data).expect("buffer")))
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// One PNG chunk: length, type, data and CRC.
pub fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

/// A well-formed PNG whose header claims `w`×`h` RGB pixels, followed by a tiny compressed stream.
pub fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(png_chunk(b"IHDR", &ihdr));
    out.extend(png_chunk(b"IDAT", &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]));
    out.extend(png_chunk(b"IEND", &[]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_deterministic_and_encode() {
        let a = synthetic_frame(64, 48, 3);
        assert_eq!(a, synthetic_frame(64, 48, 3));
        assert_ne!(a, synthetic_frame(64, 48, 4));
        assert_eq!(a.data.len(), 64 * 48 * 3);
        assert!(jpeg(&a, 90, turbojpeg::Subsamp::Sub2x2).starts_with(&[0xFF, 0xD8, 0xFF]));
        for png in [rgb_png(&a), rgba_png(&a), grey_png(&a), png_claiming(20_000, 20_000)] {
            assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        }
    }

    #[test]
    fn crc32_is_the_png_one() {
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
    }
}
