//! Encoded bytes → RGB pixels, refusing what is corrupt, unsupported or too large before any
//! large allocation happens.
//!
//! JPEG goes through libjpeg-turbo with its defaults (accurate integer IDCT, fancy upsampling),
//! which is what Pillow uses: other decoders differ by several levels on a few percent of values.
//! Other formats go through the `image` crate. Colour conversion follows PIL's `convert("RGB")`:
//! alpha is dropped (not composited), grey is replicated, palettes are expanded.

use std::io::Cursor;

use super::RgbImage;

/// Bounds on what a frame may claim to be, checked from the header before decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    pub max_width: u32,
    pub max_height: u32,
    /// width × height
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    /// Room for 8K frames (7680×4320), well past the 4K cameras ship today.
    fn default() -> Self {
        ImageLimits { max_width: 8192, max_height: 8192, max_pixels: 7680 * 4320 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
    WebP,
    Gif,
    Bmp,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("the image is empty")]
    Empty,
    #[error("unsupported image format ({0}); send JPEG, PNG, WebP, GIF or BMP")]
    UnsupportedFormat(String),
    #[error("image is {width}×{height}; the limit is {max_width}×{max_height} and {max_pixels} pixels")]
    TooLarge { width: u64, height: u64, max_width: u32, max_height: u32, max_pixels: u64 },
    #[error("corrupt {format:?} image: {message}")]
    Corrupt { format: ImageFormat, message: String },
}

/// Recognises the container from its magic bytes; the client's content type is not trusted.
pub fn sniff(bytes: &[u8]) -> Result<ImageFormat, ImageError> {
    match bytes {
        [] => Err(ImageError::Empty),
        [0xFF, 0xD8, 0xFF, ..] => Ok(ImageFormat::Jpeg),
        [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Ok(ImageFormat::Png),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Ok(ImageFormat::WebP),
        [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Ok(ImageFormat::Gif),
        [b'B', b'M', ..] => Ok(ImageFormat::Bmp),
        _ => Err(ImageError::UnsupportedFormat(describe_unknown(bytes))),
    }
}

fn describe_unknown(bytes: &[u8]) -> String {
    match bytes {
        [_, _, _, _, b'f', b't', b'y', b'p', ..] => "HEIF/AVIF".into(),
        [b'I', b'I', 42, 0, ..] | [b'M', b'M', 0, 42, ..] => "TIFF".into(),
        _ => {
            let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
            format!("unrecognised bytes {}", head.join(" "))
        }
    }
}

fn check_limits(width: u64, height: u64, limits: &ImageLimits) -> Result<(), ImageError> {
    let fits = width > 0
        && height > 0
        && width <= limits.max_width as u64
        && height <= limits.max_height as u64
        && width * height <= limits.max_pixels;
    if fits {
        return Ok(());
    }
    Err(ImageError::TooLarge {
        width,
        height,
        max_width: limits.max_width,
        max_height: limits.max_height,
        max_pixels: limits.max_pixels,
    })
}

/// Decodes a frame to 8-bit RGB.
pub fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, ImageError> {
    match sniff(bytes)? {
        ImageFormat::Jpeg => decode_jpeg(bytes, limits),
        other => decode_with_image_crate(bytes, other, limits),
    }
}

/// What [`decode`] checks before decoding, from the header alone and without allocating for
/// the pixels: the container is supported, its header parses, its size is within `limits` (and
/// a JPEG is not CMYK). The gateway runs this; a frame that passes can still be corrupt further on.
pub fn check_header(bytes: &[u8], limits: &ImageLimits) -> Result<ImageFormat, ImageError> {
    let format = sniff(bytes)?;
    match &format {
        ImageFormat::Jpeg => {
            jpeg_header(&mut jpeg_decompressor()?, bytes, limits)?;
        }
        other => {
            let (w, h) = image_crate_dimensions(bytes, other)?;
            check_limits(w as u64, h as u64, limits)?;
        }
    }
    Ok(format)
}

fn jpeg_corrupt(e: turbojpeg::Error) -> ImageError {
    ImageError::Corrupt { format: ImageFormat::Jpeg, message: e.to_string() }
}

fn jpeg_decompressor() -> Result<turbojpeg::Decompressor, ImageError> {
    turbojpeg::Decompressor::new().map_err(jpeg_corrupt)
}

fn jpeg_header(
    decompressor: &mut turbojpeg::Decompressor,
    bytes: &[u8],
    limits: &ImageLimits,
) -> Result<turbojpeg::DecompressHeader, ImageError> {
    let header = decompressor.read_header(bytes).map_err(jpeg_corrupt)?;
    check_limits(header.width as u64, header.height as u64, limits)?;
    if matches!(header.colorspace, turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK) {
        return Err(ImageError::UnsupportedFormat("CMYK JPEG".into()));
    }
    Ok(header)
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

fn crate_format(format: &ImageFormat) -> image::ImageFormat {
    match format {
        ImageFormat::Png => image::ImageFormat::Png,
        ImageFormat::WebP => image::ImageFormat::WebP,
        ImageFormat::Gif => image::ImageFormat::Gif,
        ImageFormat::Bmp => image::ImageFormat::Bmp,
        ImageFormat::Jpeg => unreachable!("JPEG is decoded by libjpeg-turbo"),
    }
}

/// The width and height a non-JPEG header claims.
fn image_crate_dimensions(bytes: &[u8], format: &ImageFormat) -> Result<(u32, u32), ImageError> {
    image::ImageReader::with_format(Cursor::new(bytes), crate_format(format))
        .into_dimensions()
        .map_err(|e| ImageError::Corrupt { format: format.clone(), message: e.to_string() })
}

fn decode_with_image_crate(bytes: &[u8], format: ImageFormat, limits: &ImageLimits) -> Result<RgbImage, ImageError> {
    let crate_format = crate_format(&format);
    let corrupt = |e: image::ImageError| ImageError::Corrupt { format: format.clone(), message: e.to_string() };
    // The header alone first: its claimed size is checked before anything is allocated for it.
    let (w, h) = image_crate_dimensions(bytes, &format)?;
    check_limits(w as u64, h as u64, limits)?;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_formats() {
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Ok(ImageFormat::Jpeg));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Ok(ImageFormat::Png));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Ok(ImageFormat::WebP));
        assert_eq!(sniff(b""), Err(ImageError::Empty));
        assert!(matches!(sniff(b"II*\0rest"), Err(ImageError::UnsupportedFormat(f)) if f == "TIFF"));
        assert!(matches!(sniff(b"hello"), Err(ImageError::UnsupportedFormat(_))));
    }

    #[test]
    fn zero_sized_is_refused() {
        assert!(check_limits(0, 10, &ImageLimits::default()).is_err());
        assert!(check_limits(8192, 8192, &ImageLimits::default()).is_err());
        assert!(check_limits(3840, 2160, &ImageLimits::default()).is_ok());
    }
}
