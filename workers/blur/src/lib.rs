//! The blur worker: a Gaussian blur of RGBA images, the image-filter workload of the
//! offloading literature, written out by hand so it has no dependencies and gives the same
//! bytes on every host.
//!
//! Message (little-endian): `width: u32`, `height: u32`, `sigma: f32`, then
//! `width × height × 4` RGBA bytes, row by row. Reply: `width: u32`, `height: u32`, then
//! the blurred RGBA pixels — `8 + 4 × width × height` bytes.
//!
//! The blur is separable: one horizontal and one vertical pass with a kernel of radius
//! `ceil(3 σ)`, pixels beyond the edges repeating the edge pixel, each channel (alpha
//! too) blurred on its own. `sigma` 0 returns the image unchanged. The arithmetic is
//! integer (16-bit fixed-point weights, 8 extra bits kept between the passes) and the
//! kernel is computed with IEEE basic operations only, so a moved worker answers with
//! exactly the bytes it would have answered before the move.
//!
//! A malformed message (short, wrong pixel count, `sigma` negative, not finite or above
//! [`MAX_SIGMA`]) gets an error reply: the byte `0xFF` followed by a UTF-8 description.
//! Its length never equals `8 + 4 × width × height` for its own first eight bytes read as
//! a header, which is how a client tells it from an image.
//!
//! The worker keeps its buffers between messages, so a stream of same-sized frames does
//! not grow its memory.

use roam_worker::{post_message, Worker};

/// The largest `sigma` accepted: radius 600, already far wider than any use.
pub const MAX_SIGMA: f32 = 200.0;

/// Fixed-point scale of the kernel weights: they sum to exactly this.
const ONE: u32 = 1 << 16;

/// The marker byte that starts an error reply.
const ERROR: u8 = 0xFF;

/// The worker state: buffers reused from one message to the next.
#[derive(Default)]
pub struct Blur {
    kernel: Vec<u32>,
    /// The horizontal pass's output, transposed, with 8 fractional bits.
    between: Vec<u16>,
    /// One padded row of the pass being run.
    line: Vec<u32>,
    /// The reply: header, then the blurred pixels.
    reply: Vec<u8>,
}

/// `e^-t` for `t >= 0` from additions, multiplications and divisions only, which IEEE 754
/// defines exactly: the platform's `exp` may differ in the last bit between hosts.
fn exp_neg(t: f64) -> f64 {
    // Halve the argument until the Taylor series converges fast, then square back.
    let mut halvings = 0;
    let mut x = t;
    while x > 0.125 {
        x /= 2.0;
        halvings += 1;
    }
    let (mut term, mut sum) = (1.0, 1.0);
    for n in 1..=12 {
        term *= -x / f64::from(n);
        sum += term;
    }
    for _ in 0..halvings {
        sum *= sum;
    }
    sum
}

/// Fills `kernel` with the `2 r + 1` weights of a Gaussian of `sigma`, `r = ceil(3 sigma)`,
/// in fixed point summing to exactly [`ONE`] (the centre takes the rounding remainder).
fn gaussian_kernel(sigma: f32, kernel: &mut Vec<u32>) {
    kernel.clear();
    let radius = (3.0 * f64::from(sigma)).ceil() as usize;
    if radius == 0 {
        kernel.push(ONE);
        return;
    }
    let two_sigma_sq = 2.0 * f64::from(sigma) * f64::from(sigma);
    let weights: Vec<f64> = (0..=2 * radius)
        .map(|i| {
            let x = i as f64 - radius as f64;
            exp_neg(x * x / two_sigma_sq)
        })
        .collect();
    let total: f64 = weights.iter().sum();
    kernel.extend(
        weights
            .iter()
            .map(|w| (w / total * f64::from(ONE) + 0.5) as u32),
    );
    let sum: u32 = kernel.iter().sum();
    // Rounding leaves the sum a few units off; the centre weight, the largest, absorbs it
    // (it stays above 100 for every sigma up to MAX_SIGMA: a test sweeps them).
    kernel[radius] = kernel[radius] + ONE - sum;
}

/// One pass of the separable blur along rows of `src` (`width × height` pixels, 4 channels,
/// each `u32::from(sample)`), written transposed into `dst` (`height × width` pixels) as
/// `round(sum / 2^shift)`. Transposing lets the second pass read rows too.
#[allow(clippy::too_many_arguments)]
fn pass<S: Copy + Into<u32>, D: Copy>(
    src: &[S],
    width: usize,
    height: usize,
    kernel: &[u32],
    shift: u32,
    line: &mut Vec<u32>,
    dst: &mut [D],
    narrow: impl Fn(u32) -> D,
) {
    let radius = kernel.len() / 2;
    let half = if shift == 0 { 0 } else { 1 << (shift - 1) };
    for (y, row) in src.chunks_exact(width * 4).enumerate() {
        // The row with `radius` copies of its edge pixels on each side.
        line.clear();
        let (first, last) = (&row[..4], &row[row.len() - 4..]);
        for _ in 0..radius {
            line.extend(first.iter().map(|&s| s.into()));
        }
        line.extend(row.iter().map(|&s| s.into()));
        for _ in 0..radius {
            line.extend(last.iter().map(|&s| s.into()));
        }
        for x in 0..width {
            let window = &line[x * 4..(x + kernel.len()) * 4];
            let mut sums = [0u32; 4];
            for (&weight, pixel) in kernel.iter().zip(window.chunks_exact(4)) {
                for (sum, &sample) in sums.iter_mut().zip(pixel) {
                    *sum += weight * sample;
                }
            }
            let out = &mut dst[(x * height + y) * 4..][..4];
            for (o, sum) in out.iter_mut().zip(sums) {
                *o = narrow((sum + half) >> shift);
            }
        }
    }
}

impl Blur {
    /// Blurs the image in `message` into `self.reply`; `Err` carries the description for
    /// the error reply.
    fn blur(&mut self, message: &[u8]) -> Result<(), String> {
        let header = message.get(..12).ok_or_else(|| {
            format!(
                "message too short: {} bytes, need a 12-byte header",
                message.len()
            )
        })?;
        let width = u32::from_le_bytes(header[0..4].try_into().expect("four bytes"));
        let height = u32::from_le_bytes(header[4..8].try_into().expect("four bytes"));
        let sigma = f32::from_le_bytes(header[8..12].try_into().expect("four bytes"));
        let pixels = &message[12..];
        let expected = 4 * u64::from(width) * u64::from(height);
        if pixels.len() as u64 != expected {
            return Err(format!(
                "{width}x{height} image needs {expected} RGBA bytes, got {}",
                pixels.len()
            ));
        }
        if !(0.0..=MAX_SIGMA).contains(&sigma) {
            return Err(format!("sigma {sigma} is not within 0..={MAX_SIGMA}"));
        }
        let (w, h) = (width as usize, height as usize);

        self.reply.clear();
        self.reply.extend_from_slice(&header[..8]);
        self.reply.resize(8 + pixels.len(), 0);
        if pixels.is_empty() {
            return Ok(());
        }
        gaussian_kernel(sigma, &mut self.kernel);
        self.between.resize(pixels.len(), 0);
        // Weights sum to 2^16: after the first pass keep 8 of those 16 bits (fits u16),
        // after the second drop all 24. Every sum stays below 255 · 2^8 · 2^16 < 2^32.
        pass(
            pixels,
            w,
            h,
            &self.kernel,
            8,
            &mut self.line,
            &mut self.between,
            |v| v as u16,
        );
        pass(
            &self.between,
            h,
            w,
            &self.kernel,
            24,
            &mut self.line,
            &mut self.reply[8..],
            |v| v as u8,
        );
        Ok(())
    }
}

impl Worker for Blur {
    fn init() -> Self {
        Blur::default()
    }

    fn on_message(&mut self, message: &[u8]) {
        match self.blur(message) {
            Ok(()) => post_message(&self.reply),
            Err(description) => {
                let mut reply = vec![ERROR];
                reply.extend_from_slice(description.as_bytes());
                post_message(&reply);
            }
        }
    }
}

roam_worker::export_worker!(Blur);

#[cfg(test)]
mod tests {
    use super::*;
    use roam_worker::take_posted;

    fn message(width: u32, height: u32, sigma: f32, rgba: &[u8]) -> Vec<u8> {
        let mut message = width.to_le_bytes().to_vec();
        message.extend_from_slice(&height.to_le_bytes());
        message.extend_from_slice(&sigma.to_le_bytes());
        message.extend_from_slice(rgba);
        message
    }

    /// Blurs one image with a fresh worker and returns the reply's pixels.
    fn blur(width: u32, height: u32, sigma: f32, rgba: &[u8]) -> Vec<u8> {
        let mut worker = Blur::init();
        worker.on_message(&message(width, height, sigma, rgba));
        let reply = take_posted().pop().unwrap();
        assert_eq!(&reply[..4], &width.to_le_bytes());
        assert_eq!(&reply[4..8], &height.to_le_bytes());
        reply[8..].to_vec()
    }

    #[test]
    fn exp_matches_the_platform_closely() {
        for t in [0.0, 0.01, 0.5, 1.0, 2.0, 4.5, 20.0, 50.0] {
            let (ours, std) = (exp_neg(t), (-t).exp());
            assert!((ours - std).abs() <= 1e-12 * std, "e^-{t}: {ours} vs {std}");
        }
    }

    #[test]
    fn kernel_is_symmetric_and_sums_to_one() {
        let mut kernel = Vec::new();
        for sigma in [0.1, 0.5, 1.0, 2.5, 10.0, MAX_SIGMA] {
            gaussian_kernel(sigma, &mut kernel);
            let radius = (3.0 * sigma).ceil() as usize;
            assert_eq!(kernel.len(), 2 * radius + 1);
            assert_eq!(kernel.iter().sum::<u32>(), ONE);
            assert!(kernel.iter().eq(kernel.iter().rev()));
        }
    }

    #[test]
    fn every_sigma_gives_a_kernel_summing_to_one() {
        let mut kernel = Vec::new();
        for step in 1..=(MAX_SIGMA * 20.0) as u32 {
            gaussian_kernel(step as f32 / 20.0, &mut kernel);
            assert_eq!(kernel.iter().sum::<u32>(), ONE);
        }
    }

    #[test]
    fn sigma_zero_returns_the_image() {
        let image: Vec<u8> = (0..4 * 5 * 3).map(|i| (i * 37 % 256) as u8).collect();
        assert_eq!(blur(5, 3, 0.0, &image), image);
    }

    #[test]
    fn a_flat_image_stays_flat() {
        let image = [10, 200, 30, 255].repeat(7 * 4);
        assert_eq!(blur(7, 4, 3.0, &image), image);
    }

    #[test]
    fn a_dot_spreads_evenly_and_keeps_its_brightness() {
        // A white dot in the middle of a black 9x9 image.
        let mut image = [0, 0, 0, 255].repeat(81);
        image[(4 * 9 + 4) * 4..][..3].copy_from_slice(&[255, 255, 255]);
        let out = blur(9, 9, 1.0, &image);
        let red = |x: usize, y: usize| out[(y * 9 + x) * 4];
        assert!(red(4, 4) < 255 && red(4, 4) > red(3, 4));
        for (dx, dy) in [(1, 0), (2, 1), (3, 3)] {
            let ring = [
                red(4 + dx, 4 + dy),
                red(4 - dx, 4 - dy),
                red(4 + dy, 4 - dx),
                red(4 - dy, 4 + dx),
            ];
            assert!(ring.iter().all(|&v| v == ring[0]), "{ring:?}");
        }
        let total: u32 = out.chunks_exact(4).map(|p| u32::from(p[0])).sum();
        assert!((245..=265).contains(&total), "brightness {total}");
        assert!(out.chunks_exact(4).all(|p| p[3] == 255 && p[0] == p[1]));
    }

    #[test]
    fn edges_repeat_the_edge_pixel() {
        // One pixel: every neighbour is the pixel itself, whatever the radius.
        assert_eq!(blur(1, 1, 50.0, &[1, 2, 3, 4]), vec![1, 2, 3, 4]);
        // A two-pixel step blurs into a symmetric ramp.
        let out = blur(2, 1, 5.0, &[0, 0, 0, 0, 200, 200, 200, 200]);
        assert_eq!(u32::from(out[0]) + u32::from(out[4]), 200);
        assert!(out[0] > 0 && out[4] < 200);
    }

    #[test]
    fn repeated_frames_reuse_the_buffers() {
        let image: Vec<u8> = (0..4 * 32 * 24).map(|i| (i % 251) as u8).collect();
        let mut worker = Blur::init();
        worker.on_message(&message(32, 24, 2.0, &image));
        let capacities = |w: &Blur| {
            (
                w.kernel.capacity(),
                w.between.capacity(),
                w.line.capacity(),
                w.reply.capacity(),
            )
        };
        let first = capacities(&worker);
        for _ in 0..5 {
            worker.on_message(&message(32, 24, 2.0, &image));
        }
        assert_eq!(capacities(&worker), first);
        let replies = take_posted();
        assert!(replies.windows(2).all(|pair| pair[0] == pair[1]));
    }

    #[test]
    fn malformed_messages_get_an_error() {
        let mut worker = Blur::init();
        worker.on_message(&[0; 11]);
        worker.on_message(&message(2, 2, 1.0, &[0; 15]));
        worker.on_message(&message(1, 1, -1.0, &[0; 4]));
        worker.on_message(&message(1, 1, f32::NAN, &[0; 4]));
        worker.on_message(&message(1, 1, MAX_SIGMA * 2.0, &[0; 4]));
        let replies = take_posted();
        assert_eq!(replies.len(), 5);
        for reply in replies {
            assert_eq!(reply[0], ERROR);
            assert!(std::str::from_utf8(&reply[1..]).is_ok());
        }
    }
}
