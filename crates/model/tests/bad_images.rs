//! Frames that must be refused: each gets a typed error, no panic, and no large allocation
//! (checked by counting this thread's largest single allocation).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use blipserve_model::model::preprocess::{decode, ImageError, ImageFormat, ImageLimits};
use blipserve_testkit::*;

struct LargestAllocation;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: forwards to the system allocator; only records sizes.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// Decodes `bytes` and returns the error, asserting no single allocation exceeded 16 MiB.
fn refused(bytes: &[u8]) -> ImageError {
    LARGEST.with(|l| l.set(0));
    let result = decode(bytes, &ImageLimits::default());
    let largest = LARGEST.with(Cell::get);
    assert!(largest < 16 << 20, "decoding allocated {largest} bytes at once");
    result.expect_err("must be refused")
}

fn small_jpeg() -> Vec<u8> {
    jpeg(&synthetic_frame(320, 240, 3), 90, turbojpeg::Subsamp::Sub2x2)
}

#[test]
fn empty_input() {
    assert_eq!(refused(b""), ImageError::Empty);
}

#[test]
fn corrupt_jpeg_bytes() {
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0];
    bytes.extend((0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    assert!(matches!(refused(&bytes), ImageError::Corrupt { format: ImageFormat::Jpeg, .. }));
}

#[test]
fn corrupt_png_bytes() {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend((0..5000u32).map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8));
    assert!(matches!(refused(&bytes), ImageError::Corrupt { format: ImageFormat::Png, .. }));
}

#[test]
fn truncated_jpeg() {
    let full = small_jpeg();
    assert!(decode(&full, &ImageLimits::default()).is_ok());
    let err = refused(&full[..full.len() / 2]);
    assert!(matches!(err, ImageError::Corrupt { format: ImageFormat::Jpeg, .. }), "{err}");
}

#[test]
fn truncated_png() {
    let full = rgb_png(&synthetic_frame(200, 150, 4));
    let err = refused(&full[..full.len() * 2 / 3]);
    assert!(matches!(err, ImageError::Corrupt { format: ImageFormat::Png, .. }), "{err}");
}

#[test]
fn png_header_claiming_20000_by_20000() {
    let err = refused(&png_claiming(20_000, 20_000));
    assert!(matches!(err, ImageError::TooLarge { width: 20_000, height: 20_000, .. }), "{err}");
}

#[test]
fn png_within_side_limit_but_too_many_pixels() {
    let err = refused(&png_claiming(8000, 8000));
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");
}

#[test]
fn jpeg_header_claiming_60000_by_60000() {
    let mut bytes = small_jpeg();
    // Patch the frame header (SOF0: FF C0, length, precision, height, width).
    let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).expect("SOF0 marker");
    bytes[sof + 5..sof + 7].copy_from_slice(&60_000u16.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&60_000u16.to_be_bytes());
    let err = refused(&bytes);
    assert!(matches!(err, ImageError::TooLarge { width: 60_000, height: 60_000, .. }), "{err}");
}

/// A 1×1 palette PNG with the given PLTE chunk, its one pixel palette index 0.
fn palette_png(plte: &[u8]) -> Vec<u8> {
    use blipserve_testkit::frames::png_chunk;
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend(png_chunk(b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 3, 0, 0, 0]));
    bytes.extend(png_chunk(b"PLTE", plte));
    // One row, filter 0 and index 0, in a stored zlib block.
    bytes.extend(png_chunk(b"IDAT", &[0x78, 0x01, 0x01, 0x02, 0x00, 0xFD, 0xFF, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01]));
    bytes.extend(png_chunk(b"IEND", &[]));
    bytes
}

#[test]
fn png_palette_of_a_partial_entry() {
    // Found by the `decode` fuzz target (fuzz/regressions/decode/): the png crate panics expanding
    // a PLTE chunk that is not a whole number of RGB entries; it must be refused like any corrupt file.
    let img = decode(&palette_png(&[10, 20, 30]), &ImageLimits::default()).expect("a whole entry decodes");
    assert_eq!((img.width, img.height, img.data), (1, 1, vec![10, 20, 30]));
    for plte in [&[10, 20, 30, 40][..], &[10, 20, 30, 40, 50]] {
        let err = refused(&palette_png(plte));
        assert!(
            matches!(&err, ImageError::Corrupt { format: ImageFormat::Png, message } if message.contains("PLTE")),
            "{err}"
        );
    }
}

#[test]
fn unsupported_formats() {
    assert_eq!(refused(b"II*\0\x08\0\0\0rest of a tiff"), ImageError::UnsupportedFormat("TIFF".into()));
    assert_eq!(refused(b"\0\0\0\x18ftypheic\0\0\0\0"), ImageError::UnsupportedFormat("HEIF/AVIF".into()));
    assert!(matches!(refused(b"{\"not\": \"an image\"}"), ImageError::UnsupportedFormat(_)));
}

#[test]
fn cmyk_jpeg_is_unsupported() {
    let cmyk: Vec<u8> = (0..64 * 48 * 4).map(|i| (i % 251) as u8).collect();
    let image = turbojpeg::Image {
        pixels: cmyk.as_slice(),
        width: 64,
        pitch: 64 * 4,
        height: 48,
        format: turbojpeg::PixelFormat::CMYK,
    };
    let bytes = turbojpeg::compress(image, 90, turbojpeg::Subsamp::None).unwrap().to_vec();
    assert_eq!(refused(&bytes), ImageError::UnsupportedFormat("CMYK JPEG".into()));
}

#[test]
fn a_good_frame_still_decodes() {
    let img = decode(&small_jpeg(), &ImageLimits::default()).expect("decodes");
    assert_eq!((img.width, img.height, img.data.len()), (320, 240, 320 * 240 * 3));
}
