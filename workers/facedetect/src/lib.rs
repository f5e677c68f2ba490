//! The face-detection worker: rustface (a port of the SeetaFace detector) with its
//! frontal-face model embedded in the module. It stands for the heavy, memory-hungry
//! workers a phone offloads to the edge: the model alone is 1.2 MB of the module's data.
//!
//! Message (little-endian): `width: u32`, `height: u32`, then the pixels row by row,
//! either `width × height` gray bytes or `width × height × 4` RGBA bytes (the length says
//! which; RGBA is turned into gray with the BT.601 luma weights, alpha ignored).
//!
//! Reply: `count: u32`, then per face `x: i32`, `y: i32`, `width: u32`, `height: u32`,
//! `score: f64` — `4 + 24 × count` bytes. The detector looks for faces of at least 20
//! pixels, keeps those scoring 2.0 or more, scales the image pyramid by 0.8 per level and
//! slides its window 4 pixels at a time.
//!
//! A message whose length fits neither pixel format gets an error reply: the byte `0xFF`
//! followed by a UTF-8 description, under 1 KiB. A face reply that begins with `0xFF` (255
//! faces or more) is at least 6124 bytes, so the length tells them apart.
//!
//! The module answers with the same bytes wherever it runs. A native build of the same
//! code may differ in the last bits of a score: the detector's sigmoid calls the
//! platform's `exp`, while the wasm module carries its own.

use roam_worker::{post_message, Worker};
use rustface::{Detector, ImageData};

/// The SeetaFace frontal model shipped by rustface (located by `build.rs`).
static MODEL: &[u8] = include_bytes!(concat!(
    env!("RUSTFACE_DIR"),
    "/model/seeta_fd_frontal_v1.0.bin"
));

/// The marker byte that starts an error reply.
const ERROR: u8 = 0xFF;

/// The worker state: the detector, built once, and buffers reused across messages.
pub struct FaceDetect {
    detector: Box<dyn Detector>,
    gray: Vec<u8>,
    reply: Vec<u8>,
}

/// A face found in an image.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Face {
    x: i32,
    y: i32,
    width: u32,
    height: u32,
    score: f64,
}

impl FaceDetect {
    fn new() -> Self {
        let model = rustface::read_model(MODEL).expect("the embedded model parses");
        let mut detector = rustface::create_detector_with_model(model);
        detector.set_min_face_size(20);
        detector.set_score_thresh(2.0);
        detector.set_pyramid_scale_factor(0.8);
        detector.set_slide_window_step(4, 4);
        FaceDetect {
            detector,
            gray: Vec::new(),
            reply: Vec::new(),
        }
    }

    /// Finds the faces in the image described by `message`; `Err` carries the description
    /// for the error reply.
    fn detect(&mut self, message: &[u8]) -> Result<Vec<Face>, String> {
        let header = message.get(..8).ok_or_else(|| {
            format!(
                "message too short: {} bytes, need an 8-byte header",
                message.len()
            )
        })?;
        let width = u32::from_le_bytes(header[..4].try_into().expect("four bytes"));
        let height = u32::from_le_bytes(header[4..].try_into().expect("four bytes"));
        let pixels = &message[8..];
        let count = u64::from(width) * u64::from(height);
        let gray: &[u8] = if pixels.len() as u64 == count {
            pixels
        } else if pixels.len() as u64 == count * 4 {
            rgba_to_gray(pixels, &mut self.gray);
            &self.gray
        } else {
            return Err(format!(
                "{width}x{height} image needs {count} gray or {} RGBA bytes, got {}",
                count * 4,
                pixels.len()
            ));
        };
        // rustface refuses empty images; an image smaller than the smallest face has none.
        if width < 20 || height < 20 {
            return Ok(Vec::new());
        }
        let faces = self.detector.detect(&ImageData::new(gray, width, height));
        Ok(faces
            .iter()
            .map(|face| {
                let bbox = face.bbox();
                Face {
                    x: bbox.x(),
                    y: bbox.y(),
                    width: bbox.width(),
                    height: bbox.height(),
                    score: face.score(),
                }
            })
            .collect())
    }
}

/// Converts RGBA pixels to gray with the BT.601 weights in 8-bit fixed point
/// (77 + 150 + 29 = 256), reusing `gray`'s allocation.
fn rgba_to_gray(rgba: &[u8], gray: &mut Vec<u8>) {
    gray.clear();
    gray.extend(rgba.chunks_exact(4).map(|pixel| {
        let luma = 77 * u32::from(pixel[0]) + 150 * u32::from(pixel[1]) + 29 * u32::from(pixel[2]);
        ((luma + 128) >> 8) as u8
    }));
}

impl Worker for FaceDetect {
    fn init() -> Self {
        FaceDetect::new()
    }

    fn on_message(&mut self, message: &[u8]) {
        match self.detect(message) {
            Ok(faces) => {
                self.reply.clear();
                self.reply
                    .extend_from_slice(&(faces.len() as u32).to_le_bytes());
                for face in faces {
                    self.reply.extend_from_slice(&face.x.to_le_bytes());
                    self.reply.extend_from_slice(&face.y.to_le_bytes());
                    self.reply.extend_from_slice(&face.width.to_le_bytes());
                    self.reply.extend_from_slice(&face.height.to_le_bytes());
                    self.reply.extend_from_slice(&face.score.to_le_bytes());
                }
                post_message(&self.reply);
            }
            Err(description) => {
                let mut reply = vec![ERROR];
                reply.extend_from_slice(description.as_bytes());
                post_message(&reply);
            }
        }
    }
}

roam_worker::export_worker!(FaceDetect);

#[cfg(test)]
mod tests {
    use super::*;
    use roam_worker::take_posted;

    fn message(width: u32, height: u32, pixels: &[u8]) -> Vec<u8> {
        let mut message = width.to_le_bytes().to_vec();
        message.extend_from_slice(&height.to_le_bytes());
        message.extend_from_slice(pixels);
        message
    }

    fn decode(reply: &[u8]) -> Vec<Face> {
        let count = u32::from_le_bytes(reply[..4].try_into().unwrap()) as usize;
        assert_eq!(reply.len(), 4 + 24 * count);
        reply[4..]
            .chunks_exact(24)
            .map(|face| Face {
                x: i32::from_le_bytes(face[0..4].try_into().unwrap()),
                y: i32::from_le_bytes(face[4..8].try_into().unwrap()),
                width: u32::from_le_bytes(face[8..12].try_into().unwrap()),
                height: u32::from_le_bytes(face[12..16].try_into().unwrap()),
                score: f64::from_le_bytes(face[16..24].try_into().unwrap()),
            })
            .collect()
    }

    /// The group photo rustface ships for its own examples, as gray pixels.
    fn group_photo() -> (u32, u32, Vec<u8>) {
        let path = concat!(env!("RUSTFACE_DIR"), "/test.png");
        let decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(path).expect("rustface ships test.png"),
        ));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        let rgba: Vec<u8> = pixels[..info.buffer_size()]
            .chunks_exact(3)
            .flat_map(|rgb| [rgb[0], rgb[1], rgb[2], 255])
            .collect();
        let mut gray = Vec::new();
        rgba_to_gray(&rgba, &mut gray);
        (info.width, info.height, gray)
    }

    #[test]
    fn finds_the_faces_in_a_group_photo() {
        let (width, height, gray) = group_photo();
        let mut worker = FaceDetect::init();
        worker.on_message(&message(width, height, &gray));
        let faces = decode(&take_posted()[0]);
        assert!(faces.len() >= 10, "found only {} faces", faces.len());
        for face in &faces {
            assert!(face.score >= 2.0);
            assert!(face.width >= 20 && face.height >= 20);
            assert!(face.x + face.width as i32 > 0 && face.x < width as i32);
            assert!(face.y + face.height as i32 > 0 && face.y < height as i32);
        }
    }

    #[test]
    fn rgba_and_gray_input_give_the_same_faces() {
        let (width, height, gray) = group_photo();
        // A crop keeps the test quick; the same faces must come out of both formats.
        let (crop_w, crop_h) = (width / 2, height / 2);
        let crop: Vec<u8> = gray
            .chunks_exact(width as usize)
            .take(crop_h as usize)
            .flat_map(|row| &row[..crop_w as usize])
            .copied()
            .collect();
        let rgba: Vec<u8> = crop.iter().flat_map(|&g| [g, g, g, 0]).collect();
        let mut worker = FaceDetect::init();
        worker.on_message(&message(crop_w, crop_h, &crop));
        worker.on_message(&message(crop_w, crop_h, &rgba));
        let replies = take_posted();
        assert!(!decode(&replies[0]).is_empty());
        assert_eq!(replies[0], replies[1]);
    }

    #[test]
    fn a_blank_image_has_no_faces() {
        let mut worker = FaceDetect::init();
        worker.on_message(&message(64, 48, &[128; 64 * 48]));
        worker.on_message(&message(0, 0, &[]));
        worker.on_message(&message(5, 5, &[0; 25]));
        assert_eq!(take_posted(), vec![vec![0; 4]; 3]);
    }

    #[test]
    fn gray_conversion_weights_the_channels() {
        let mut gray = Vec::new();
        rgba_to_gray(
            &[255, 255, 255, 0, 0, 0, 0, 255, 255, 0, 0, 9, 0, 255, 0, 0],
            &mut gray,
        );
        assert_eq!(gray, vec![255, 0, 77, 149]);
    }

    #[test]
    fn malformed_messages_get_an_error() {
        let mut worker = FaceDetect::init();
        worker.on_message(&[1, 0, 0]);
        worker.on_message(&message(30, 30, &[0; 899]));
        for reply in take_posted() {
            assert_eq!(reply[0], ERROR);
            assert!(std::str::from_utf8(&reply[1..]).is_ok());
        }
    }
}
