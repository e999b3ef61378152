//! Turning untrusted bytes into upright 8-bit RGB pixels, safely.
//!
//! Every object in the bucket is attacker-controlled input, so decoding is
//! bounded before any pixel buffer exists: the header's declared dimensions
//! are checked against the configured limits (a 50000×50000 PNG of a few
//! hundred bytes is refused, not allocated), and the decoder's own
//! allocations are capped. Decoding is CPU-bound, so it runs on the blocking
//! pool behind a semaphore (`crate::pool::CpuPool`) and never stalls the async runtime.
//!
//! The models never look at more than about a megapixel, so a large JPEG is
//! decoded at reduced scale in the DCT domain (1/2, 1/4 or 1/8, see
//! [`DEFAULT_DECODE_SIDE`]): a 12 MP photo costs a fraction of a full decode,
//! and every resize after it starts from a quarter of the pixels or fewer.

use std::io::Cursor;

use bytes::Bytes;
use image::error::{LimitErrorKind, UnsupportedErrorKind};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits};
use imagetag_shared::ports::DecodedImage;

use crate::pool::CpuPool;

pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;
pub const DEFAULT_MAX_DIMENSION: u32 = 20_000;

/// Longest side a reduced-scale JPEG decode keeps at least. The largest
/// input of any model is the text detector's 960 (`imagetag_vision::ocr::DET_LIMIT`);
/// text recognition crops lines out of these pixels and reads them at 48
/// pixels high, so the decode keeps twice the detector's resolution. The
/// thumbnail (320) and the other models (≤ 416) need less.
pub const DEFAULT_DECODE_SIDE: u32 = 1920;

/// Bytes per pixel the decoders may need for the widest sample layout we
/// expect (16-bit RGBA). Float TIFFs need more and are refused by the
/// allocation cap at the largest sizes, which is the safe direction.
const DECODE_BYTES_PER_PIXEL: u64 = 8;

/// Room for a decoder's bookkeeping beyond the output buffer (row buffers,
/// palettes, zlib state, metadata chunks).
const DECODER_OVERHEAD_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted width × height.
    pub max_pixels: u64,
    /// Largest accepted width and height.
    pub max_dimension: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_PIXELS,
            max_dimension: DEFAULT_MAX_DIMENSION,
        }
    }
}

impl DecodeLimits {
    /// Cap on what a decoder may allocate, derived from the pixel budget so
    /// one setting bounds both the dimensions and the memory.
    pub fn max_alloc(&self) -> u64 {
        self.max_pixels
            .saturating_mul(DECODE_BYTES_PER_PIXEL)
            .saturating_add(DECODER_OVERHEAD_BYTES)
    }

    fn image_limits(&self) -> Limits {
        let mut limits = Limits::default();
        limits.max_image_width = Some(self.max_dimension);
        limits.max_image_height = Some(self.max_dimension);
        limits.max_alloc = Some(self.max_alloc());
        limits
    }

    fn allows(&self, width: u32, height: u32) -> bool {
        width <= self.max_dimension
            && height <= self.max_dimension
            && u64::from(width) * u64::from(height) <= self.max_pixels
    }

    fn describe(&self) -> String {
        format!(
            "the limit is {} pixels per side and {} megapixels",
            self.max_dimension,
            megapixels(self.max_pixels)
        )
    }
}

fn megapixels(pixels: u64) -> String {
    let mp = pixels as f64 / 1_000_000.0;
    if mp.fract() == 0.0 {
        format!("{mp:.0}")
    } else {
        format!("{mp:.1}")
    }
}

/// Why bytes could not become pixels. The `Display` text is stored on the
/// image record as the reason, so it is written for people.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("the object is empty (0 bytes), not an image")]
    Empty,
    #[error("not a supported image: the content matches none of JPEG, PNG, GIF, WebP, BMP or TIFF")]
    UnknownFormat,
    #[error("unsupported {format} image: {detail}")]
    Unsupported { format: String, detail: String },
    #[error("{}", too_large_message(*.width, *.height, .limits))]
    TooLarge {
        /// Declared dimensions, when the header could be read.
        width: Option<u32>,
        height: Option<u32>,
        limits: DecodeLimits,
    },
    #[error("corrupt or truncated {format} image: {detail}")]
    Corrupt { format: String, detail: String },
}

fn too_large_message(width: Option<u32>, height: Option<u32>, limits: &DecodeLimits) -> String {
    match (width, height) {
        (Some(width), Some(height)) => format!(
            "image is too large: {width}×{height} pixels ({} megapixels); {}",
            megapixels(u64::from(width) * u64::from(height)),
            limits.describe()
        ),
        _ => format!(
            "image is too large to decode within the memory limit; {}",
            limits.describe()
        ),
    }
}

/// Lower-case name of a format as stored in `ImageFacts::format`.
pub fn format_name(format: ImageFormat) -> String {
    match format {
        ImageFormat::Jpeg => "jpeg".into(),
        ImageFormat::Png => "png".into(),
        ImageFormat::Gif => "gif".into(),
        ImageFormat::WebP => "webp".into(),
        ImageFormat::Bmp => "bmp".into(),
        ImageFormat::Tiff => "tiff".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// An image decoded for tagging: the pixels (possibly at reduced scale) and
/// the upright size of the image as stored, which is what the record says.
pub struct Decoded {
    pub image: DecodedImage,
    pub width: u32,
    pub height: u32,
}

/// Decodes `encoded` at full size, synchronously. Call it from the blocking
/// pool (see `Decoder`), never from an async task.
pub fn decode_image(encoded: Bytes, limits: &DecodeLimits) -> Result<DecodedImage, DecodeError> {
    decode_scaled(encoded, limits, None).map(|decoded| decoded.image)
}

/// As [`decode_image`], but a JPEG at least twice `min_side` on its longer
/// side is decoded at the smallest DCT scale that keeps its longer side at
/// `min_side` or more. Every check (format, completeness, limits, EXIF
/// orientation) is the same as for a full decode.
pub fn decode_scaled(
    encoded: Bytes,
    limits: &DecodeLimits,
    min_side: Option<u32>,
) -> Result<Decoded, DecodeError> {
    if encoded.is_empty() {
        return Err(DecodeError::Empty);
    }
    // A Cursor cannot fail to seek or read, so the io::Error is moot; it is
    // still mapped rather than unwrapped.
    let reader = ImageReader::new(Cursor::new(encoded.as_ref()))
        .with_guessed_format()
        .map_err(|err| DecodeError::Corrupt {
            format: "image".into(),
            detail: err.to_string(),
        })?;
    // Only the content decides the format: names and content types lie.
    let Some(format) = reader.format() else {
        return Err(DecodeError::UnknownFormat);
    };
    let name = format_name(format);
    if format == ImageFormat::Jpeg && !jpeg_is_complete(&encoded) {
        return Err(DecodeError::Corrupt {
            format: name,
            detail:
                "the data ends before the image does (no end-of-image marker after the image data)"
                    .into(),
        });
    }

    let mut reader = reader;
    reader.limits(limits.image_limits());
    let mut decoder = match reader.into_decoder() {
        Ok(decoder) => decoder,
        Err(ImageError::Limits(err)) if matches!(err.kind(), LimitErrorKind::DimensionError) => {
            let (width, height) = declared_dimensions(&encoded, limits).unzip();
            return Err(DecodeError::TooLarge {
                width,
                height,
                limits: *limits,
            });
        }
        Err(err) => return Err(map_error(err, &name, limits)),
    };

    let (width, height) = decoder.dimensions();
    if !limits.allows(width, height) {
        return Err(DecodeError::TooLarge {
            width: Some(width),
            height: Some(height),
            limits: *limits,
        });
    }
    // `DynamicImage::from_decoder` allocates the whole output buffer without
    // consulting the limits, so the check `ImageReader::decode` would make is
    // made here.
    if decoder.total_bytes() > limits.max_alloc() {
        return Err(DecodeError::TooLarge {
            width: Some(width),
            height: Some(height),
            limits: *limits,
        });
    }

    // Broken EXIF must not cost an otherwise good image its tags: without a
    // readable orientation the pixels are used as stored.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let (width, height) = upright(width, height, orientation);
    let reduced = match min_side {
        Some(side) if format == ImageFormat::Jpeg => reduced_jpeg(&encoded, side, limits),
        _ => None,
    };
    let mut image = match reduced {
        Some(rgb) => {
            // The full decoder borrows the bytes, which the result keeps.
            drop(decoder);
            DynamicImage::ImageRgb8(rgb)
        }
        None => DynamicImage::from_decoder(decoder).map_err(|err| map_error(err, &name, limits))?,
    };
    image.apply_orientation(orientation);
    let rgb = image.into_rgb8();

    Ok(Decoded {
        image: DecodedImage {
            encoded,
            rgb,
            format: name,
        },
        width,
        height,
    })
}

/// Size after applying `orientation`: quarter turns swap the sides.
fn upright(width: u32, height: u32, orientation: Orientation) -> (u32, u32) {
    match orientation {
        Orientation::Rotate90
        | Orientation::Rotate270
        | Orientation::Rotate90FlipH
        | Orientation::Rotate270FlipH => (height, width),
        _ => (width, height),
    }
}

/// The JPEG decoded at the smallest of 1/8, 1/4 and 1/2 that keeps its
/// longer side at `min_side` or more (IDCT on fewer coefficients, so the
/// full-size pixels never exist). `None` when no reduction applies or the
/// reduced decode cannot give 8-bit RGB or grey; the full decoder then
/// decides, so errors and colour handling (CMYK, 16-bit) stay its own.
fn reduced_jpeg(encoded: &[u8], min_side: u32, limits: &DecodeLimits) -> Option<image::RgbImage> {
    let mut decoder = jpeg_decoder::Decoder::new(encoded);
    decoder.read_info().ok()?;
    let info = decoder.info()?;
    if u32::from(info.width.max(info.height)) < min_side.saturating_mul(2) {
        return None;
    }
    decoder.set_max_decoding_buffer_size(usize::try_from(limits.max_alloc()).unwrap_or(usize::MAX));
    let side = u16::try_from(min_side).unwrap_or(u16::MAX);
    let (width, height) = decoder.scale(side, side).ok()?;
    let pixels = decoder.decode().ok()?;
    let (width, height) = (u32::from(width), u32::from(height));
    match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => image::RgbImage::from_raw(width, height, pixels),
        jpeg_decoder::PixelFormat::L8 => image::GrayImage::from_raw(width, height, pixels)
            .map(|grey| DynamicImage::ImageLuma8(grey).into_rgb8()),
        _ => None,
    }
}

/// Whether a JPEG's image data is followed by its end-of-image marker.
///
/// The JPEG decoder is lenient: it fills whatever a truncated file lacks with
/// grey and reports success, and tags computed from half an image would be
/// stored as if they described it. The marker segments are walked to the
/// main image's first scan (an EXIF thumbnail is a complete JPEG of its own
/// inside APP1, so a plain search could find *its* markers); entropy-coded
/// data cannot contain 0xFFD9, so finding one after the scan header means
/// the file was not cut short. Data after the marker (as in motion photos)
/// is allowed.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let mut at = 2; // past SOI
    loop {
        let Some(&0xFF) = bytes.get(at) else {
            return false;
        };
        // Markers may be preceded by any number of fill bytes.
        while bytes.get(at) == Some(&0xFF) {
            at += 1;
        }
        let Some(&marker) = bytes.get(at) else {
            return false;
        };
        at += 1;
        match marker {
            // Standalone markers carry no length.
            0x01 | 0xD0..=0xD7 => continue,
            0xD9 => return false,
            _ => {}
        }
        let Some(length) = bytes
            .get(at..at + 2)
            .map(|len| usize::from(u16::from_be_bytes([len[0], len[1]])))
        else {
            return false;
        };
        at += length;
        if marker == 0xDA {
            return bytes
                .get(at..)
                .is_some_and(|rest| rest.windows(2).any(|pair| pair == [0xFF, 0xD9]));
        }
    }
}

/// Dimensions from the header alone, for the message of a refusal. The
/// dimension limits are lifted for this probe but the allocation cap is not,
/// so the probe itself stays cheap.
fn declared_dimensions(encoded: &[u8], limits: &DecodeLimits) -> Option<(u32, u32)> {
    let mut reader = ImageReader::new(Cursor::new(encoded))
        .with_guessed_format()
        .ok()?;
    let mut probe = Limits::default();
    probe.max_alloc = Some(limits.max_alloc());
    reader.limits(probe);
    reader.into_dimensions().ok()
}

fn map_error(err: ImageError, format: &str, limits: &DecodeLimits) -> DecodeError {
    match err {
        ImageError::Limits(_) => DecodeError::TooLarge {
            width: None,
            height: None,
            limits: *limits,
        },
        ImageError::Unsupported(unsupported) => match unsupported.kind() {
            // The signature matched a format this build does not decode.
            UnsupportedErrorKind::Format(_) => DecodeError::UnknownFormat,
            _ => DecodeError::Unsupported {
                format: format.to_owned(),
                detail: unsupported.to_string(),
            },
        },
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            DecodeError::Corrupt {
                format: format.to_owned(),
                detail: "the data ends before the image does".into(),
            }
        }
        other => DecodeError::Corrupt {
            format: format.to_owned(),
            detail: other.to_string(),
        },
    }
}

/// Decodes on the bounded blocking pool.
#[derive(Clone)]
pub struct Decoder {
    limits: DecodeLimits,
    pool: CpuPool,
    min_side: Option<u32>,
}

impl Decoder {
    /// Large JPEGs are decoded at reduced scale down to
    /// [`DEFAULT_DECODE_SIDE`]; see [`Decoder::with_min_side`].
    pub fn new(limits: DecodeLimits, pool: CpuPool) -> Self {
        Self {
            limits,
            pool,
            min_side: Some(DEFAULT_DECODE_SIDE),
        }
    }

    /// Longest side a reduced-scale decode keeps at least; `None` always
    /// decodes at full size.
    pub fn with_min_side(mut self, min_side: Option<u32>) -> Self {
        self.min_side = min_side;
        self
    }

    pub fn pool(&self) -> &CpuPool {
        &self.pool
    }

    pub fn limits(&self) -> &DecodeLimits {
        &self.limits
    }

    pub async fn decode(&self, encoded: Bytes) -> Result<Decoded, DecodeError> {
        let (limits, min_side) = (self.limits, self.min_side);
        self.pool
            .run(move || decode_scaled(encoded, &limits, min_side))
            .await
            .unwrap_or_else(|panic| {
                // A decoder panic on crafted input is a property of the
                // bytes, so it is treated like any other undecodable file.
                Err(DecodeError::Corrupt {
                    format: "image".into(),
                    detail: format!("the decoder failed on this file ({panic})"),
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::jpeg::JpegEncoder;
    use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};

    fn png(width: u32, height: u32) -> Bytes {
        let image = RgbImage::from_pixel(width, height, Rgb([10, 200, 30]));
        let mut out = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .expect("encode png");
        Bytes::from(out)
    }

    fn jpeg(image: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, 100)
            .write_image(
                image.as_raw(),
                image.width(),
                image.height(),
                ExtendedColorType::Rgb8,
            )
            .expect("encode jpeg");
        out
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                let mask = (crc & 1).wrapping_neg();
                crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
            }
        }
        !crc
    }

    fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }

    /// A well-formed PNG header declaring `width`×`height` RGB pixels,
    /// followed by a few bytes of image data: a decompression bomb's shape.
    fn png_declaring(width: u32, height: u32) -> Bytes {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        png_chunk(&mut out, b"IHDR", &ihdr);
        // zlib stream of an empty stored block: tiny, and valid as zlib.
        png_chunk(
            &mut out,
            b"IDAT",
            &[
                0x78, 0x01, 0x01, 0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x01,
            ],
        );
        png_chunk(&mut out, b"IEND", &[]);
        Bytes::from(out)
    }

    /// Inserts an EXIF APP1 segment carrying only an orientation tag right
    /// after the JPEG's start-of-image marker.
    fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Bytes {
        let mut payload = b"Exif\0\0".to_vec();
        // Big-endian TIFF header, first IFD at offset 8.
        payload.extend_from_slice(b"MM\x00\x2A\x00\x00\x00\x08");
        payload.extend_from_slice(&1u16.to_be_bytes());
        // Tag 0x0112 (Orientation), type SHORT, count 1, value padded to 4.
        payload.extend_from_slice(&[0x01, 0x12, 0x00, 0x03, 0x00, 0x00, 0x00, 0x01]);
        payload.extend_from_slice(&orientation.to_be_bytes());
        payload.extend_from_slice(&[0, 0]);
        // No next IFD.
        payload.extend_from_slice(&[0, 0, 0, 0]);

        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&payload);
        out.extend_from_slice(&jpeg[2..]);
        Bytes::from(out)
    }

    fn limits() -> DecodeLimits {
        DecodeLimits::default()
    }

    fn refused(bytes: Bytes) -> DecodeError {
        match decode_image(bytes, &limits()) {
            Ok(decoded) => panic!("decoded to {:?}", decoded.rgb.dimensions()),
            Err(err) => err,
        }
    }

    #[test]
    fn png_decodes_with_its_dimensions() {
        let decoded = decode_image(png(7, 5), &limits()).expect("decodes");
        assert_eq!(decoded.rgb.dimensions(), (7, 5));
        assert_eq!(decoded.format, "png");
        assert_eq!(decoded.rgb.get_pixel(3, 3), &Rgb([10, 200, 30]));
    }

    #[test]
    fn jpeg_decodes_with_its_dimensions() {
        let image = RgbImage::from_pixel(33, 17, Rgb([128, 128, 128]));
        let decoded = decode_image(Bytes::from(jpeg(&image)), &limits()).expect("decodes");
        assert_eq!(decoded.rgb.dimensions(), (33, 17));
        assert_eq!(decoded.format, "jpeg");
    }

    #[test]
    fn every_enabled_format_decodes_and_is_named() {
        let image = RgbImage::from_pixel(9, 6, Rgb([40, 80, 120]));
        for (format, name) in [
            (ImageFormat::Gif, "gif"),
            (ImageFormat::WebP, "webp"),
            (ImageFormat::Bmp, "bmp"),
            (ImageFormat::Tiff, "tiff"),
        ] {
            let mut out = Vec::new();
            image
                .write_to(&mut Cursor::new(&mut out), format)
                .expect("encode");
            let decoded = decode_image(Bytes::from(out), &limits()).expect(name);
            assert_eq!(decoded.rgb.dimensions(), (9, 6), "{name}");
            assert_eq!(decoded.format, name);
        }
    }

    #[test]
    fn truncated_png_is_corrupt() {
        let full = png(64, 64);
        let err = refused(full.slice(..full.len() / 2));
        assert!(matches!(err, DecodeError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn png_bomb_is_refused_from_its_header() {
        let err = refused(png_declaring(50_000, 50_000));
        assert_eq!(
            err,
            DecodeError::TooLarge {
                width: Some(50_000),
                height: Some(50_000),
                limits: limits(),
            }
        );
        let reason = err.to_string();
        assert!(reason.contains("50000×50000"), "{reason}");
        assert!(reason.contains("20000 pixels per side"), "{reason}");
    }

    #[test]
    fn too_many_pixels_within_the_side_limit_is_refused() {
        // 10000×10000 is within 20000 per side but 100 MP, over 40 MP; the
        // image data is a few bytes, so only a header check can refuse it.
        let err = refused(png_declaring(10_000, 10_000));
        assert!(
            matches!(
                err,
                DecodeError::TooLarge {
                    width: Some(10_000),
                    height: Some(10_000),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("100 megapixels"), "{err}");
    }

    #[test]
    fn truncated_jpeg_is_corrupt() {
        let mut image = RgbImage::new(64, 64);
        for (x, y, pixel) in image.enumerate_pixels_mut() {
            *pixel = Rgb([(x * 4) as u8, (y * 4) as u8, ((x + y) * 2) as u8]);
        }
        let full = jpeg(&image);
        let truncated = Bytes::copy_from_slice(&full[..full.len() / 3]);
        let err = refused(truncated);
        assert!(matches!(err, DecodeError::Corrupt { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("corrupt or truncated jpeg image"),
            "{err}"
        );
    }

    #[test]
    fn jpeg_completeness_ignores_an_exif_thumbnail() {
        let image = RgbImage::from_pixel(16, 16, Rgb([90, 90, 90]));
        let full = jpeg(&image);
        assert!(jpeg_is_complete(&full));
        // An APP1 segment holding a whole JPEG (as EXIF thumbnails do), in
        // front of a main image cut short.
        let mut app1 = vec![0xFF, 0xE1];
        app1.extend_from_slice(&((full.len() + 2) as u16).to_be_bytes());
        app1.extend_from_slice(&full);
        let mut out = full[..2].to_vec();
        out.extend_from_slice(&app1);
        out.extend_from_slice(&full[2..full.len() - 10]);
        assert!(!jpeg_is_complete(&out));
        // Data after the end-of-image marker does not matter.
        let mut trailing = full.clone();
        trailing.extend_from_slice(b"ftypmp42 motion photo video");
        assert!(jpeg_is_complete(&trailing));
    }

    #[test]
    fn random_bytes_are_not_an_image() {
        // A fixed xorshift sequence, so the test cannot flake on a lucky
        // signature.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let bytes: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let err = refused(Bytes::from(bytes));
        assert_eq!(err, DecodeError::UnknownFormat);
        assert!(err.to_string().contains("not a supported image"));
    }

    #[test]
    fn empty_object_is_refused_clearly() {
        let err = refused(Bytes::new());
        assert_eq!(err, DecodeError::Empty);
        assert_eq!(
            err.to_string(),
            "the object is empty (0 bytes), not an image"
        );
    }

    #[test]
    fn exif_orientation_is_applied() {
        // Quadrants on 16-pixel boundaries so JPEG's chroma subsampling never
        // mixes two colours in one block.
        let red = Rgb([255, 0, 0]);
        let green = Rgb([0, 255, 0]);
        let blue = Rgb([0, 0, 255]);
        let white = Rgb([255, 255, 255]);
        let image = RgbImage::from_fn(64, 32, |x, y| match (x < 32, y < 16) {
            (true, true) => red,
            (false, true) => green,
            (true, false) => blue,
            (false, false) => white,
        });
        // Orientation 6: the stored image must be turned 90° clockwise.
        let decoded =
            decode_image(with_exif_orientation(&jpeg(&image), 6), &limits()).expect("decodes");
        assert_eq!(decoded.rgb.dimensions(), (32, 64));

        let near = |pixel: &Rgb<u8>, want: Rgb<u8>| {
            pixel.0.iter().zip(want.0).all(|(&a, b)| a.abs_diff(b) < 40)
        };
        // Turned clockwise, the old left column becomes the top row: the
        // top-left quadrant moves to the top right, bottom-left to top-left.
        assert!(
            near(decoded.rgb.get_pixel(24, 8), red),
            "{:?}",
            decoded.rgb.get_pixel(24, 8)
        );
        assert!(
            near(decoded.rgb.get_pixel(8, 8), blue),
            "{:?}",
            decoded.rgb.get_pixel(8, 8)
        );
        assert!(
            near(decoded.rgb.get_pixel(24, 56), green),
            "{:?}",
            decoded.rgb.get_pixel(24, 56)
        );
        assert!(
            near(decoded.rgb.get_pixel(8, 56), white),
            "{:?}",
            decoded.rgb.get_pixel(8, 56)
        );
    }

    #[test]
    fn small_exif_rotated_jpeg_swaps_dimensions() {
        let image = RgbImage::from_pixel(4, 2, Rgb([200, 10, 10]));
        let decoded =
            decode_image(with_exif_orientation(&jpeg(&image), 6), &limits()).expect("decodes");
        assert_eq!(decoded.rgb.dimensions(), (2, 4));
    }

    /// Quadrants (red, green / blue, white) on 16-pixel boundaries, so
    /// neither chroma subsampling nor a reduced-scale IDCT mixes colours
    /// away from the edges.
    fn quadrants(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            match (x < width / 2, y < height / 2) {
                (true, true) => Rgb([255, 0, 0]),
                (false, true) => Rgb([0, 255, 0]),
                (true, false) => Rgb([0, 0, 255]),
                (false, false) => Rgb([255, 255, 255]),
            }
        })
    }

    fn near(pixel: &Rgb<u8>, want: [u8; 3]) -> bool {
        pixel.0.iter().zip(want).all(|(&a, b)| a.abs_diff(b) < 40)
    }

    #[test]
    fn large_jpeg_decodes_at_reduced_scale_with_its_stored_size() {
        let full = quadrants(1024, 768);
        let decoded =
            decode_scaled(Bytes::from(jpeg(&full)), &limits(), Some(256)).expect("decodes");
        // 1/4 keeps the longer side at 256 (1/8 would give 128).
        assert_eq!(decoded.image.rgb.dimensions(), (256, 192));
        assert_eq!((decoded.width, decoded.height), (1024, 768));
        assert_eq!(decoded.image.format, "jpeg");
        let rgb = &decoded.image.rgb;
        assert!(
            near(rgb.get_pixel(60, 40), [255, 0, 0]),
            "{:?}",
            rgb.get_pixel(60, 40)
        );
        assert!(near(rgb.get_pixel(200, 40), [0, 255, 0]));
        assert!(near(rgb.get_pixel(60, 150), [0, 0, 255]));
        assert!(near(rgb.get_pixel(200, 150), [255, 255, 255]));
    }

    #[test]
    fn reduced_decode_applies_exif_orientation_and_reports_the_upright_size() {
        let full = quadrants(1024, 512);
        let bytes = with_exif_orientation(&jpeg(&full), 6);
        let decoded = decode_scaled(bytes, &limits(), Some(256)).expect("decodes");
        assert_eq!(decoded.image.rgb.dimensions(), (128, 256));
        assert_eq!((decoded.width, decoded.height), (512, 1024));
        // Turned clockwise: the stored top-left (red) is now top-right.
        let rgb = &decoded.image.rgb;
        assert!(
            near(rgb.get_pixel(96, 32), [255, 0, 0]),
            "{:?}",
            rgb.get_pixel(96, 32)
        );
        assert!(near(rgb.get_pixel(32, 32), [0, 0, 255]));
        assert!(near(rgb.get_pixel(96, 224), [0, 255, 0]));
    }

    #[test]
    fn images_below_twice_the_side_and_other_formats_decode_at_full_size() {
        let small = quadrants(500, 300);
        let decoded =
            decode_scaled(Bytes::from(jpeg(&small)), &limits(), Some(256)).expect("decodes");
        assert_eq!(decoded.image.rgb.dimensions(), (500, 300));
        let decoded = decode_scaled(png(1024, 768), &limits(), Some(256)).expect("decodes");
        assert_eq!(decoded.image.rgb.dimensions(), (1024, 768));
        let decoded = decode_scaled(Bytes::from(jpeg(&quadrants(1024, 768))), &limits(), None)
            .expect("decodes");
        assert_eq!(decoded.image.rgb.dimensions(), (1024, 768));
    }

    #[test]
    fn reduced_decode_keeps_the_limits_and_the_completeness_check() {
        let full = jpeg(&quadrants(1024, 768));
        let tight = DecodeLimits {
            max_pixels: 500_000,
            max_dimension: 20_000,
        };
        let err = match decode_scaled(Bytes::from(full.clone()), &tight, Some(256)) {
            Ok(decoded) => panic!("decoded to {:?}", decoded.image.rgb.dimensions()),
            Err(err) => err,
        };
        assert!(matches!(err, DecodeError::TooLarge { .. }), "{err:?}");
        let truncated = Bytes::copy_from_slice(&full[..full.len() / 2]);
        let err = match decode_scaled(truncated, &limits(), Some(256)) {
            Ok(decoded) => panic!("decoded to {:?}", decoded.image.rgb.dimensions()),
            Err(err) => err,
        };
        assert!(matches!(err, DecodeError::Corrupt { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn decoder_runs_on_the_blocking_pool() {
        let decoder = Decoder::new(limits(), CpuPool::new(1));
        let (a, b) = tokio::join!(decoder.decode(png(3, 3)), decoder.decode(png(4, 4)));
        assert_eq!(a.expect("decodes").image.rgb.dimensions(), (3, 3));
        assert_eq!(b.expect("decodes").image.rgb.dimensions(), (4, 4));
    }
}
