//! Bicubic resampling that reproduces Pillow's `Image.resize(..., BICUBIC)` on 8-bit images.
//!
//! Pillow resamples with a separable convolution: Keys' cubic (a = −0.5) whose support widens
//! with the downscale factor, coefficients normalised to sum 1 and then held in 22-bit fixed
//! point, one pass per axis (their order depends on the shapes, see [`resize_bicubic`]), each pass rounding
//! and clipping to 8 bits. Every one of those steps shows up in the output, so each is mirrored
//! here; the parity tests compare against Pillow itself.

use super::RgbImage;

const PRECISION_BITS: u32 = 32 - 8 - 2;
const SUPPORT: f64 = 2.0;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point filter taps for one axis: output `i` reads `count[i]` inputs from `start[i]`.
struct Taps {
    ksize: usize,
    start: Vec<usize>,
    count: Vec<usize>,
    weights: Vec<i32>,
}

impl Taps {
    fn new(in_size: usize, out_size: usize) -> Taps {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = SUPPORT * filter_scale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut taps = Taps {
            ksize,
            start: Vec::with_capacity(out_size),
            count: Vec::with_capacity(out_size),
            weights: vec![0; out_size * ksize],
        };
        let mut k = vec![0f64; ksize];
        for i in 0..out_size {
            let center = (i as f64 + 0.5) * scale;
            let inv = 1.0 / filter_scale;
            // `as` truncates toward zero, like C's (int) cast Pillow uses here.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = hi.saturating_sub(lo);
            let mut total = 0.0;
            for (x, w) in k.iter_mut().enumerate().take(n) {
                *w = bicubic(((x + lo) as f64 - center + 0.5) * inv);
                total += *w;
            }
            let row = &mut taps.weights[i * ksize..(i + 1) * ksize];
            for x in 0..n {
                let w = if total != 0.0 { k[x] / total } else { k[x] };
                let scaled = w * (1u32 << PRECISION_BITS) as f64;
                row[x] = if w < 0.0 { (scaled - 0.5) as i32 } else { (scaled + 0.5) as i32 };
            }
            taps.start.push(lo);
            taps.count.push(n);
        }
        taps
    }

    fn row(&self, i: usize) -> &[i32] {
        &self.weights[i * self.ksize..i * self.ksize + self.count[i]]
    }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Resizes an RGB image to `width`×`height` exactly as Pillow's bicubic filter does.
///
/// Pass order follows Pillow 13: vertical first when the height shrinks by more than twice as
/// many pixels as the width does, otherwise horizontal first (over only the rows the vertical
/// pass reads). The order changes the 8-bit intermediate, so it matters.
pub fn resize_bicubic(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = (src.width, src.height);
    if (in_w, in_h) == (width, height) {
        return src.clone();
    }
    let (shrink_w, shrink_h) = (in_w as i64 - width as i64, in_h as i64 - height as i64);
    if shrink_h > 0 && shrink_h > shrink_w * 2 {
        let tall = vertical_pass(src, height, None);
        return horizontal_pass(&tall, width, None);
    }
    if width == in_w {
        return vertical_pass(src, height, None);
    }
    if height == in_h {
        return horizontal_pass(src, width, None);
    }
    // Horizontal first, over only the rows the vertical pass will read.
    let vertical = Taps::new(in_h as usize, height as usize);
    let first = vertical.start[0];
    let last = vertical.start[height as usize - 1] + vertical.count[height as usize - 1];
    let wide = horizontal_pass(src, width, Some(first..last));
    vertical_pass(&wide, height, Some((&vertical, first)))
}

/// Resamples each row of `src` (or of `rows` only) to `width` pixels.
fn horizontal_pass(src: &RgbImage, width: u32, rows: Option<std::ops::Range<usize>>) -> RgbImage {
    let (in_w, out_w) = (src.width as usize, width as usize);
    let rows = rows.unwrap_or(0..src.height as usize);
    let taps = Taps::new(in_w, out_w);
    let mut out = vec![0u8; rows.len() * out_w * 3];
    for (oy, y) in rows.clone().enumerate() {
        let src_row = &src.data[y * in_w * 3..(y + 1) * in_w * 3];
        let dst_row = &mut out[oy * out_w * 3..(oy + 1) * out_w * 3];
        for x in 0..out_w {
            let base = taps.start[x] * 3;
            let (mut r, mut g, mut b) = (HALF, HALF, HALF);
            for (j, &w) in taps.row(x).iter().enumerate() {
                let p = base + j * 3;
                r += src_row[p] as i32 * w;
                g += src_row[p + 1] as i32 * w;
                b += src_row[p + 2] as i32 * w;
            }
            dst_row[x * 3] = clip8(r);
            dst_row[x * 3 + 1] = clip8(g);
            dst_row[x * 3 + 2] = clip8(b);
        }
    }
    RgbImage { width, height: rows.len() as u32, data: out }
}

/// Resamples each column of `src` to `height` pixels. `taps` may be precomputed for a taller
/// source of which `src` holds the rows from `row_offset` on.
fn vertical_pass(src: &RgbImage, height: u32, taps: Option<(&Taps, usize)>) -> RgbImage {
    let owned;
    let (taps, row_offset) = match taps {
        Some(t) => t,
        None => {
            owned = Taps::new(src.height as usize, height as usize);
            (&owned, 0)
        }
    };
    let stride = src.width as usize * 3;
    let mut out = vec![0u8; height as usize * stride];
    for y in 0..height as usize {
        let k = taps.row(y);
        let start = taps.start[y] - row_offset;
        let dst_row = &mut out[y * stride..(y + 1) * stride];
        for (i, dst) in dst_row.iter_mut().enumerate() {
            let mut acc = HALF;
            for (j, &wt) in k.iter().enumerate() {
                acc += src.data[(start + j) * stride + i] as i32 * wt;
            }
            *dst = clip8(acc);
        }
    }
    RgbImage { width: src.width, height, data: out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_sum_to_one_in_fixed_point() {
        for (i, o) in [(1920, 384), (64, 384), (385, 384), (7, 3)] {
            let taps = Taps::new(i, o);
            for x in 0..o {
                let sum: i64 = taps.row(x).iter().map(|&w| w as i64).sum();
                assert!((sum - (1 << PRECISION_BITS)).abs() <= taps.count[x] as i64, "{i}->{o} @{x}: {sum}");
            }
        }
    }

    #[test]
    fn flat_image_stays_flat() {
        let src = RgbImage { width: 50, height: 30, data: [10u8, 128, 250].repeat(50 * 30) };
        let out = resize_bicubic(&src, 384, 384);
        assert_eq!((out.width, out.height), (384, 384));
        assert!(out.data.chunks(3).all(|p| p == [10, 128, 250]));
    }

    #[test]
    fn same_size_is_a_copy() {
        let src = RgbImage { width: 4, height: 4, data: (0..48).collect() };
        assert_eq!(resize_bicubic(&src, 4, 4), src);
    }
}
