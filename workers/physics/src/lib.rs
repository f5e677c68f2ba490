//! The physics worker: cubes falling onto the ground, simulated with rapier3d. It stands
//! for the game and simulation workers a phone would rather run on the edge.
//!
//! Every message starts with an op byte; all numbers are little-endian.
//!
//! | op | body | what it does |
//! |---|---|---|
//! | 0 (init) | `cubes: u32`, `seed: u32` | replaces the scene: a ground plane and `cubes` cubes in stacks above it, placed from `seed` |
//! | 1 (step) | `steps: u32` | advances the simulation `steps` steps of 1/60 s |
//!
//! Both reply with the poses: `cubes: u32`, then per cube, in creation order, the position
//! `x, y, z` and the rotation quaternion `qx, qy, qz, qw`, all `f32` — `4 + 28 × cubes`
//! bytes. Before the first init the scene has no cubes.
//!
//! A message that is too short, has an unknown op or asks for more than
//! [`MAX_CUBES`] cubes leaves the scene unchanged and gets an error reply: the byte `0xFF`
//! followed by a UTF-8 description. Error replies are under 1 KiB, while a pose reply that
//! begins with `0xFF` (255 cubes or more) is at least 7144 bytes, so the length tells them
//! apart.
//!
//! The same seed gives the same scene and, step for step, bit-identical poses in every
//! WebAssembly engine: wasm's float instructions, SIMD ones included (built with
//! `simd128`, `workers/.cargo/config.toml`), are defined to the bit, and every other math
//! function is compiled into the module. That is what lets a test compare a moved worker's
//! replies with one that never moved.

use rapier3d::prelude::*;
use roam_worker::{post_message, Worker};

/// The largest scene `init` builds; a bigger request gets an error reply.
pub const MAX_CUBES: u32 = 100_000;

/// Half the edge of a cube, in metres.
const CUBE_HALF: f32 = 0.5;
/// Distance between the centres of neighbouring cubes in a layer, and between layers.
const SPACING: f32 = 1.5;
/// The simulation step: 60 Hz, as a game's frame.
const STEP: f32 = 1.0 / 60.0;

/// The marker byte that starts an error reply.
const ERROR: u8 = 0xFF;

/// The worker state: the physics world and its cubes, in creation order.
pub struct Physics {
    world: PhysicsWorld,
    cubes: Vec<RigidBodyHandle>,
    /// The pose reply, kept so repeated steps reuse one buffer.
    reply: Vec<u8>,
}

/// SplitMix64: a tiny seeded generator, so the scene depends on the seed and nothing else.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `[-1, 1)`.
    fn signed_unit(&mut self) -> f32 {
        // 24 bits: exactly representable in an f32.
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

impl Physics {
    fn empty() -> Self {
        Physics {
            world: PhysicsWorld::new(),
            cubes: Vec::new(),
            reply: Vec::new(),
        }
    }

    /// Replaces the scene with the ground and `cubes` cubes placed from `seed`.
    fn build_scene(&mut self, cubes: u32, seed: u32) {
        let mut world = PhysicsWorld::new();
        world.integration_parameters.dt = STEP;

        // Stacks on a square grid, about four cubes tall: `side × side` cubes per layer,
        // each cube nudged and tilted a little so the stacks topple differently per seed.
        let side = (f64::from(cubes) / 4.0).sqrt().ceil().clamp(1.0, 64.0) as u32;
        let per_layer = side * side;
        let half_width = side as f32 * SPACING / 2.0;

        let ground_half = half_width + 20.0;
        world.insert(
            RigidBodyBuilder::fixed().translation(Vector::new(0.0, -0.5, 0.0)),
            ColliderBuilder::cuboid(ground_half, 0.5, ground_half),
        );

        let mut random = SplitMix64(u64::from(seed));
        let mut handles = Vec::with_capacity(cubes as usize);
        for i in 0..cubes {
            let layer = i / per_layer;
            let row = (i % per_layer) / side;
            let column = i % side;
            let x =
                column as f32 * SPACING - half_width + SPACING / 2.0 + 0.2 * random.signed_unit();
            let z = row as f32 * SPACING - half_width + SPACING / 2.0 + 0.2 * random.signed_unit();
            let y = CUBE_HALF + 1.0 + layer as f32 * SPACING + 0.2 * random.signed_unit();
            let tilt = Vector::new(
                0.3 * random.signed_unit(),
                0.3 * random.signed_unit(),
                0.3 * random.signed_unit(),
            );
            let (handle, _) = world.insert(
                RigidBodyBuilder::dynamic()
                    .translation(Vector::new(x, y, z))
                    .rotation(tilt),
                ColliderBuilder::cuboid(CUBE_HALF, CUBE_HALF, CUBE_HALF),
            );
            handles.push(handle);
        }

        self.world = world;
        self.cubes = handles;
    }

    fn step(&mut self, steps: u32) {
        for _ in 0..steps {
            self.world.step();
        }
    }

    /// Writes the pose reply into `self.reply`.
    fn encode_poses(&mut self) {
        self.reply.clear();
        self.reply
            .extend_from_slice(&(self.cubes.len() as u32).to_le_bytes());
        for &handle in &self.cubes {
            let pose = self.world.bodies[handle].position();
            let (t, r) = (pose.translation, pose.rotation);
            for value in [t.x, t.y, t.z, r.x, r.y, r.z, r.w] {
                self.reply.extend_from_slice(&value.to_le_bytes());
            }
        }
    }

    /// Runs one request; `Err` carries the description for the error reply.
    fn handle(&mut self, message: &[u8]) -> Result<(), String> {
        let (&op, body) = message
            .split_first()
            .ok_or_else(|| "empty message: expected an op byte".to_string())?;
        match op {
            0 => {
                let cubes = read_u32(body, 0, "init: cubes")?;
                let seed = read_u32(body, 4, "init: seed")?;
                if cubes > MAX_CUBES {
                    return Err(format!("init: {cubes} cubes is more than {MAX_CUBES}"));
                }
                self.build_scene(cubes, seed);
            }
            1 => self.step(read_u32(body, 0, "step: steps")?),
            _ => return Err(format!("unknown op {op}: expected 0 (init) or 1 (step)")),
        }
        Ok(())
    }
}

/// The little-endian u32 at `offset` in `body`, or the error naming the missing `field`.
fn read_u32(body: &[u8], offset: usize, field: &str) -> Result<u32, String> {
    body.get(offset..offset + 4)
        .map(|bytes| u32::from_le_bytes(bytes.try_into().expect("four bytes")))
        .ok_or_else(|| format!("message too short: {field} (u32) missing"))
}

impl Worker for Physics {
    fn init() -> Self {
        Physics::empty()
    }

    fn on_message(&mut self, message: &[u8]) {
        match self.handle(message) {
            Ok(()) => {
                self.encode_poses();
                post_message(&self.reply);
            }
            Err(description) => {
                let mut reply = Vec::with_capacity(1 + description.len());
                reply.push(ERROR);
                reply.extend_from_slice(description.as_bytes());
                post_message(&reply);
            }
        }
    }
}

roam_worker::export_worker!(Physics);

#[cfg(test)]
mod tests {
    use super::*;
    use roam_worker::take_posted;

    fn init_message(cubes: u32, seed: u32) -> Vec<u8> {
        let mut message = vec![0];
        message.extend_from_slice(&cubes.to_le_bytes());
        message.extend_from_slice(&seed.to_le_bytes());
        message
    }

    fn step_message(steps: u32) -> Vec<u8> {
        let mut message = vec![1];
        message.extend_from_slice(&steps.to_le_bytes());
        message
    }

    /// Sends `messages` to a fresh worker and returns its replies.
    fn run(messages: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut physics = Physics::init();
        for message in messages {
            physics.on_message(message);
        }
        take_posted()
    }

    /// Decodes a pose reply into `[x, y, z, qx, qy, qz, qw]` per cube.
    fn poses(reply: &[u8]) -> Vec<[f32; 7]> {
        let cubes = u32::from_le_bytes(reply[..4].try_into().unwrap()) as usize;
        assert_eq!(reply.len(), 4 + 28 * cubes);
        reply[4..]
            .chunks_exact(28)
            .map(|cube| {
                let mut pose = [0.0; 7];
                for (value, bytes) in pose.iter_mut().zip(cube.chunks_exact(4)) {
                    *value = f32::from_le_bytes(bytes.try_into().unwrap());
                }
                pose
            })
            .collect()
    }

    #[test]
    fn init_places_the_cubes_above_the_ground() {
        let replies = run(&[init_message(20, 7)]);
        let cubes = poses(&replies[0]);
        assert_eq!(cubes.len(), 20);
        for [_, y, ..] in &cubes {
            assert!(*y > CUBE_HALF, "cube starts in the ground at y = {y}");
        }
    }

    #[test]
    fn cubes_fall_and_come_to_rest_on_the_ground() {
        let replies = run(&[init_message(8, 1), step_message(600)]);
        let start = poses(&replies[0]);
        let end = poses(&replies[1]);
        let lowest_start = start.iter().map(|p| p[1]).fold(f32::MAX, f32::min);
        let lowest_end = end.iter().map(|p| p[1]).fold(f32::MAX, f32::min);
        assert!(lowest_end < lowest_start);
        for [x, y, z, qx, qy, qz, qw] in end {
            assert!(
                y > 0.0 && y < 10.0,
                "cube at ({x}, {y}, {z}) is not on the ground"
            );
            let norm = qx * qx + qy * qy + qz * qz + qw * qw;
            assert!((norm - 1.0).abs() < 1e-3);
        }
    }

    #[test]
    fn same_seed_gives_identical_bytes() {
        let messages = [init_message(30, 42), step_message(120), step_message(1)];
        let first = run(&messages);
        let second = run(&messages);
        assert_eq!(first, second);
        let other_seed = run(&[init_message(30, 43)]);
        assert_ne!(first[0], other_seed[0]);
    }

    #[test]
    fn stepping_in_pieces_matches_stepping_at_once() {
        let at_once = run(&[init_message(10, 3), step_message(90)]);
        let in_pieces = run(&[
            init_message(10, 3),
            step_message(30),
            step_message(0),
            step_message(60),
        ]);
        assert_eq!(at_once[1], in_pieces[3]);
    }

    #[test]
    fn bad_messages_get_an_error_and_leave_the_scene_alone() {
        let replies = run(&[
            init_message(5, 9),
            vec![],
            vec![7, 0, 0, 0, 0],
            vec![0, 1, 0],
            vec![1, 1],
            init_message(MAX_CUBES + 1, 0),
            step_message(0),
        ]);
        for error in &replies[1..6] {
            assert_eq!(error[0], ERROR);
            assert!(std::str::from_utf8(&error[1..]).is_ok());
            assert!(error.len() < 1024);
        }
        assert_eq!(replies[6], replies[0]);
    }

    #[test]
    fn steps_before_init_report_an_empty_scene() {
        let replies = run(&[step_message(10)]);
        assert_eq!(replies, vec![0u32.to_le_bytes().to_vec()]);
    }
}
