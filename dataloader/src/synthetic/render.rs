//! Procedural scenes of the synthetic dataset and their antialiased
//! rasterisation.
//!
//! Each shape is a signed distance function (negative inside, in pixels);
//! a pixel's coverage is `clamp(0.5 - d, 0, 1)`, an analytic box-filter
//! antialiasing that costs one distance evaluation per pixel near the shape.

use image::{Rgb, RgbImage};

use crate::rng::{mix64, Rng};

/// Saturated object colours, in label order.
pub(crate) const COLOURS: [(&str, [f64; 3]); 6] = [
    ("red", [220.0, 30.0, 35.0]),
    ("green", [30.0, 185.0, 45.0]),
    ("blue", [35.0, 70.0, 235.0]),
    ("yellow", [245.0, 220.0, 20.0]),
    ("purple", [150.0, 40.0, 205.0]),
    ("orange", [255.0, 135.0, 0.0]),
];
/// Shapes, in label order.
pub(crate) const SHAPES: [&str; 5] = ["circle", "square", "triangle", "cross", "star"];
/// Position phrases; the index selects the anchor of the object's centre.
pub(crate) const POSITIONS: [&str; 5] = ["top left", "top right", "bottom left", "bottom right", "center"];
/// Size words: index 0 is small, 1 is large.
pub(crate) const SIZES: [&str; 2] = ["small", "large"];

/// Everything random about one synthetic image, in resolution-independent
/// units (fractions of the image side).
#[derive(Clone, Debug)]
pub(crate) struct Scene {
    pub(crate) colour: usize,
    pub(crate) shape: usize,
    pub(crate) size: usize,
    pub(crate) position: usize,
    /// Object centre, fractions of the side, y down.
    centre: (f64, f64),
    /// Object radius, fraction of the side.
    radius: f64,
    /// Rotation in radians.
    rotation: f64,
    fill: [f64; 3],
    /// Background colour at the start and end of the gradient.
    bg_from: [f64; 3],
    bg_to: [f64; 3],
    /// Unit direction of the background gradient.
    gradient_dir: (f64, f64),
    noise_amplitude: f64,
    noise_key: u64,
}

impl Scene {
    /// Draws a scene of class `label` (colour × 5 + shape) from `rng`.
    pub(crate) fn random(label: usize, rng: &mut Rng) -> Scene {
        let colour = (label / SHAPES.len()) % COLOURS.len();
        let shape = label % SHAPES.len();
        let size = rng.below(2) as usize;
        let position = rng.below(POSITIONS.len() as u64) as usize;
        let radius = if size == 0 { rng.uniform(0.18, 0.24) } else { rng.uniform(0.30, 0.38) };
        let margin_x = rng.uniform(0.02, 0.07);
        let margin_y = rng.uniform(0.02, 0.07);
        let near = |m: f64| m + radius;
        let far = |m: f64| 1.0 - m - radius;
        let centre = match position {
            0 => (near(margin_x), near(margin_y)),
            1 => (far(margin_x), near(margin_y)),
            2 => (near(margin_x), far(margin_y)),
            3 => (far(margin_x), far(margin_y)),
            _ => (0.5 + margin_x - 0.045, 0.5 + margin_y - 0.045),
        };
        let rotation = rng.uniform(-0.3, 0.3);
        let base = COLOURS[colour].1;
        let fill = base.map(|c| (c + rng.uniform(-12.0, 12.0)).clamp(0.0, 255.0));
        // Muted, near-grey background: saturation (max - min) stays under ~40,
        // the objects' is over 120.
        let grey = rng.uniform(60.0, 195.0);
        let bg_from = [(); 3].map(|_| grey + rng.uniform(-15.0, 15.0));
        let bg_to = if rng.below(2) == 0 {
            bg_from
        } else {
            let shift = rng.uniform(-30.0, 30.0);
            bg_from.map(|c| (c + shift).clamp(40.0, 215.0))
        };
        let angle = rng.uniform(0.0, std::f64::consts::TAU);
        let noise_amplitude = if rng.below(2) == 0 { 0.0 } else { rng.uniform(2.0, 8.0) };
        Scene {
            colour,
            shape,
            size,
            position,
            centre,
            radius,
            rotation,
            fill,
            bg_from,
            bg_to,
            gradient_dir: (angle.cos(), angle.sin()),
            noise_amplitude,
            noise_key: rng.next_u64(),
        }
    }

    /// A word for the background's brightness: "dark", "grey" or "light".
    pub(crate) fn background_word(&self) -> &'static str {
        let mean = (self.bg_from.iter().sum::<f64>() + self.bg_to.iter().sum::<f64>()) / 6.0;
        if mean < 105.0 {
            "dark"
        } else if mean < 150.0 {
            "grey"
        } else {
            "light"
        }
    }

    /// Rasterises the scene at `side`×`side` pixels.
    pub(crate) fn render(&self, side: u32) -> RgbImage {
        let s = f64::from(side);
        let (cx, cy) = (self.centre.0 * s, self.centre.1 * s);
        let r = self.radius * s;
        let (sin, cos) = self.rotation.sin_cos();
        let reach = r * 1.1 + 1.0;
        let (gx, gy) = self.gradient_dir;
        RgbImage::from_fn(side, side, |x, y| {
            let (px, py) = (f64::from(x) + 0.5, f64::from(y) + 0.5);
            // Background: linear gradient across the image plus light noise.
            let t = ((px / s - 0.5) * gx + (py / s - 0.5) * gy) * std::f64::consts::FRAC_1_SQRT_2 + 0.5;
            let noise = if self.noise_amplitude > 0.0 {
                let h = mix64(self.noise_key ^ (u64::from(y) << 32 | u64::from(x)));
                ((h >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 2.0 * self.noise_amplitude
            } else {
                0.0
            };
            let mut rgb: [f64; 3] =
                std::array::from_fn(|c| self.bg_from[c] + (self.bg_to[c] - self.bg_from[c]) * t + noise);
            let (dx, dy) = (px - cx, py - cy);
            if dx.abs() < reach && dy.abs() < reach {
                // Rotate into the object's frame, y up.
                let u = dx * cos + dy * sin;
                let v = dx * sin - dy * cos;
                let coverage = (0.5 - shape_distance(self.shape, u, v, r)).clamp(0.0, 1.0);
                for (v, fill) in rgb.iter_mut().zip(self.fill) {
                    *v += (fill - *v) * coverage;
                }
            }
            Rgb(rgb.map(|v| v.round().clamp(0.0, 255.0) as u8))
        })
    }
}

/// Signed distance (pixels, negative inside) from (`x`, `y`), y up, to shape
/// `shape` of radius `r` centred at the origin.
fn shape_distance(shape: usize, x: f64, y: f64, r: f64) -> f64 {
    match shape {
        0 => (x * x + y * y).sqrt() - 0.92 * r,
        1 => sd_box(x, y, 0.8 * r, 0.8 * r),
        2 => sd_equilateral_triangle(x, y + 0.15 * r, r),
        3 => sd_box(x, y, r, 0.32 * r).min(sd_box(x, y, 0.32 * r, r)),
        _ => sd_star5(x, y, 1.05 * r, 0.45),
    }
}

/// Axis-aligned box with half-sides `bx`, `by` (Quilez).
fn sd_box(x: f64, y: f64, bx: f64, by: f64) -> f64 {
    let (dx, dy) = (x.abs() - bx, y.abs() - by);
    let (ox, oy) = (dx.max(0.0), dy.max(0.0));
    (ox * ox + oy * oy).sqrt() + dx.max(dy).min(0.0)
}

/// Upward equilateral triangle with circumradius `r`, centred on its
/// centroid (Quilez's `sdEquilateralTriangle`, side `√3·r`).
fn sd_equilateral_triangle(x: f64, y: f64, r: f64) -> f64 {
    const K: f64 = 1.732_050_807_568_877_2;
    let half = r * K / 2.0;
    let (mut px, mut py) = (x.abs() - half, y + half / K);
    if px + K * py > 0.0 {
        (px, py) = ((px - K * py) / 2.0, (-K * px - py) / 2.0);
    }
    px -= px.clamp(-2.0 * half, 0.0);
    -(px * px + py * py).sqrt() * py.signum()
}

/// Five-pointed star, outer radius `r`, inner radius factor `rf`, one point
/// up (Quilez's `sdStar5`).
fn sd_star5(x: f64, y: f64, r: f64, rf: f64) -> f64 {
    const K1: (f64, f64) = (0.809_016_994_375, -0.587_785_252_292);
    const K2: (f64, f64) = (-0.809_016_994_375, -0.587_785_252_292);
    let (mut px, mut py) = (x.abs(), y);
    let d1 = 2.0 * (K1.0 * px + K1.1 * py).max(0.0);
    px -= d1 * K1.0;
    py -= d1 * K1.1;
    let d2 = 2.0 * (K2.0 * px + K2.1 * py).max(0.0);
    px -= d2 * K2.0;
    py -= d2 * K2.1;
    px = px.abs();
    py -= r;
    let (bax, bay) = (rf * -K1.1, rf * K1.0 - 1.0);
    let h = ((px * bax + py * bay) / (bax * bax + bay * bay)).clamp(0.0, r);
    let (qx, qy) = (px - bax * h, py - bay * h);
    (qx * qx + qy * qy).sqrt() * (py * bax - px * bay).signum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backgrounds_are_muted_and_objects_saturated() {
        let saturation =
            |c: [f64; 3]| c.iter().fold(f64::MIN, |a, &b| a.max(b)) - c.iter().fold(f64::MAX, |a, &b| a.min(b));
        for key in 0..500 {
            let scene = Scene::random(key as usize % 30, &mut Rng::from_key(&[key]));
            assert!(saturation(scene.bg_from) <= 30.0 && saturation(scene.bg_to) <= 30.0);
            assert!(saturation(scene.fill) >= 120.0, "{:?}", scene.fill);
        }
    }

    #[test]
    fn shapes_contain_their_centre_and_exclude_far_points() {
        for shape in 0..SHAPES.len() {
            assert!(shape_distance(shape, 0.0, 0.0, 10.0) < -2.0, "shape {shape}");
            assert!(shape_distance(shape, 0.0, 12.0, 10.0) > 0.0, "shape {shape}");
            assert!(shape_distance(shape, 11.0, -11.0, 10.0) > 0.0, "shape {shape}");
        }
        // The cross covers its arm tips, the square its corners.
        assert!(shape_distance(3, 9.0, 0.0, 10.0) < 0.0);
        assert!(shape_distance(3, 7.0, 7.0, 10.0) > 0.0);
        assert!(shape_distance(1, 7.5, 7.5, 10.0) < 0.0);
        // The star has a point straight up and a notch straight down.
        assert!(shape_distance(4, 0.0, 9.5, 10.0) < 0.0);
        assert!(shape_distance(4, 0.0, -7.0, 10.0) > 0.0);
    }
}
