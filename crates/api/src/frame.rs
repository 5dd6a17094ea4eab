//! An encoded frame as the API tier sees it: which container it is (from its magic bytes, never
//! the client's content type), and whether its header is sane and within the limits, checked
//! without decoding and without allocating for the pixels. The gateway runs [`check_header`];
//! the inference tier's decoder runs the same checks first (with [`jpeg_header`],
//! [`image_crate_dimensions`] and [`check_limits`]) and then decodes.

use std::io::Cursor;

/// Bounds on what a frame may claim to be, checked from the header before decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    pub max_width: u32,
    pub max_height: u32,
    /// width × height
    pub max_pixels: u64,
}

impl ImageLimits {
    /// Room for 8K frames (7680×4320), well past the 4K cameras ship today. The flags
    /// `--max-image-side` and `--max-image-pixels` default to this.
    pub const DEFAULT: ImageLimits = ImageLimits { max_width: 8192, max_height: 8192, max_pixels: 7680 * 4320 };
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits::DEFAULT
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

pub fn check_limits(width: u64, height: u64, limits: &ImageLimits) -> Result<(), ImageError> {
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

/// What the decoder checks before decoding, from the header alone and without allocating for
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

pub fn jpeg_corrupt(e: turbojpeg::Error) -> ImageError {
    ImageError::Corrupt { format: ImageFormat::Jpeg, message: e.to_string() }
}

pub fn jpeg_decompressor() -> Result<turbojpeg::Decompressor, ImageError> {
    turbojpeg::Decompressor::new().map_err(jpeg_corrupt)
}

pub fn jpeg_header(
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

pub fn crate_format(format: &ImageFormat) -> image::ImageFormat {
    match format {
        ImageFormat::Png => image::ImageFormat::Png,
        ImageFormat::WebP => image::ImageFormat::WebP,
        ImageFormat::Gif => image::ImageFormat::Gif,
        ImageFormat::Bmp => image::ImageFormat::Bmp,
        ImageFormat::Jpeg => unreachable!("JPEG is decoded by libjpeg-turbo"),
    }
}

/// The width and height a non-JPEG header claims.
pub fn image_crate_dimensions(bytes: &[u8], format: &ImageFormat) -> Result<(u32, u32), ImageError> {
    image::ImageReader::with_format(Cursor::new(bytes), crate_format(format))
        .into_dimensions()
        .map_err(|e| ImageError::Corrupt { format: format.clone(), message: e.to_string() })
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
