//! Encoded bytes → RGB pixels, refusing what is corrupt, unsupported or too large before any
//! large allocation happens.
//!
//! JPEG goes through libjpeg-turbo with its defaults (accurate integer IDCT, fancy upsampling),
//! which is what Pillow uses: other decoders differ by several levels on a few percent of values.
//! Other formats go through the `image` crate. Colour conversion follows PIL's `convert("RGB")`:
//! alpha is dropped (not composited), grey is replicated, palettes are expanded.

use std::io::Cursor;

use blipserve_api::frame::{
    check_limits, crate_format, image_crate_dimensions, jpeg_corrupt, jpeg_decompressor, jpeg_header, sniff,
    ImageError, ImageFormat, ImageLimits,
};

use super::RgbImage;

/// Decodes a frame to 8-bit RGB.
pub fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, ImageError> {
    match sniff(bytes)? {
        ImageFormat::Jpeg => decode_jpeg(bytes, limits),
        other => decode_with_image_crate(bytes, other, limits),
    }
}

fn decode_jpeg(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, ImageError> {
    let corrupt = jpeg_corrupt;
    let mut decompressor = jpeg_decompressor()?;
    let header = jpeg_header(&mut decompressor, bytes, limits)?;
    // A progressive JPEG with thousands of scans costs CPU out of proportion to its size.
    decompressor.set_scan_limit(500).map_err(corrupt)?;
    let (width, height) = (header.width, header.height);
    let mut image = turbojpeg::Image {
        pixels: vec![0u8; width * height * 3],
        width,
        pitch: width * 3,
        height,
        format: turbojpeg::PixelFormat::RGB,
    };
    // Like Pillow (without LOAD_TRUNCATED_IMAGES), a truncated file is an error, not a grey band.
    decompressor.decompress(bytes, image.as_deref_mut()).map_err(corrupt)?;
    Ok(RgbImage { width: width as u32, height: height as u32, data: image.pixels })
}

fn decode_with_image_crate(bytes: &[u8], format: ImageFormat, limits: &ImageLimits) -> Result<RgbImage, ImageError> {
    let crate_format = crate_format(&format);
    let corrupt = |e: image::ImageError| ImageError::Corrupt { format: format.clone(), message: e.to_string() };
    // The header alone first: its claimed size is checked before anything is allocated for it.
    let (w, h) = image_crate_dimensions(bytes, &format)?;
    check_limits(w as u64, h as u64, limits)?;
    if format == ImageFormat::Png {
        check_png_palette(bytes)?;
    }

    let mut crate_limits = image::Limits::default();
    crate_limits.max_image_width = Some(limits.max_width);
    crate_limits.max_image_height = Some(limits.max_height);
    // Decoded RGBA16 is the widest layout: 8 bytes a pixel, plus slack for the decoder.
    crate_limits.max_alloc = Some(limits.max_pixels * 8 + (64 << 20));
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), crate_format);
    reader.limits(crate_limits);
    let decoded = reader.decode().map_err(corrupt)?;
    let rgb = to_rgb_like_pil(decoded);
    Ok(RgbImage { width: rgb.width(), height: rgb.height(), data: rgb.into_raw() })
}

/// A PNG's palette (PLTE) must be 1 to 256 entries of 3 bytes. The png crate (0.18.1) checks the
/// range but not that the length is a whole number of entries, and then panics expanding the
/// palette (found by the `decode` fuzz target; image-rs/image-png#694): such a file is refused
/// here as corrupt. Walks the chunks' headers only.
fn check_png_palette(bytes: &[u8]) -> Result<(), ImageError> {
    let mut rest = bytes.get(8..).unwrap_or_default();
    while let [l0, l1, l2, l3, k0, k1, k2, k3, ..] = *rest {
        let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
        match &[k0, k1, k2, k3] {
            b"PLTE" if !len.is_multiple_of(3) || !(3..=768).contains(&len) => {
                return Err(ImageError::Corrupt {
                    format: ImageFormat::Png,
                    message: format!("a PLTE chunk of {len} bytes: a palette is 1 to 256 entries of 3 bytes"),
                });
            }
            b"IEND" => break,
            _ => {}
        }
        // Length, type, data and CRC; a truncated chunk is the decoder's to report.
        let Some(next) = len.checked_add(12).and_then(|end| rest.get(end..)) else { break };
        rest = next;
    }
    Ok(())
}

/// PIL reads 16-bit RGB(A) PNGs by keeping each sample's high byte; the image crate would round.
fn to_rgb_like_pil(img: image::DynamicImage) -> image::RgbImage {
    use image::DynamicImage as D;
    match img {
        D::ImageRgb16(buf) => {
            let (w, h) = buf.dimensions();
            let data = buf.into_raw().into_iter().map(|v| (v >> 8) as u8).collect();
            image::RgbImage::from_raw(w, h, data).expect("3 samples per pixel")
        }
        D::ImageRgba16(buf) => {
            let (w, h) = buf.dimensions();
            let raw = buf.into_raw();
            let data = raw.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).map(|v| (v >> 8) as u8).collect();
            image::RgbImage::from_raw(w, h, data).expect("3 samples per pixel")
        }
        other => other.to_rgb8(),
    }
}
