//! A corpus of hostile and broken uploads, generated (no binaries are
//! committed): empty and truncated files, things that are not images,
//! decompression bombs, odd but valid images, EXIF orientations and
//! awkward keys. Each case says which state it must end in.

use std::io::Cursor;

use image::{ImageFormat, Rgb, RgbImage};

/// Objects larger than this are over the limit the corpus tests configure.
pub const SIZE_LIMIT: u64 = 3_000_000;

/// Which service must refuse a case, which decides where its message ends:
/// ingest acknowledges what it rejects, the tagger's refusals end in the
/// tag jobs' dead-letter queue after the bounded redeliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Ingest,
    Tagger,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// Tagged, with the stored (upright) dimensions and, for the EXIF
    /// cases, the corner the red marker must end up in.
    Tagged {
        width: u32,
        height: u32,
        red_corner: Option<Corner>,
    },
    /// Rejected by `stage` with a reason containing `reason`.
    Rejected { stage: Stage, reason: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corner {
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
}

#[derive(Debug, Clone)]
pub struct Case {
    pub key: String,
    pub body: Vec<u8>,
    /// Content type given to S3 (the embedded bucket guesses it from the
    /// name instead).
    pub content_type: &'static str,
    pub expect: Expect,
    /// Whether the case makes sense as a file in a folder (`../`, content
    /// types and names over the file system's limits do not).
    pub as_file: bool,
}

fn case(key: impl Into<String>, body: Vec<u8>, content_type: &'static str, expect: Expect) -> Case {
    Case {
        key: key.into(),
        body,
        content_type,
        expect,
        as_file: true,
    }
}

fn tagged(width: u32, height: u32) -> Expect {
    Expect::Tagged {
        width,
        height,
        red_corner: None,
    }
}

fn rejected(stage: Stage, reason: &'static str) -> Expect {
    Expect::Rejected { stage, reason }
}

fn encode(image: &image::DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, format)
        .unwrap_or_else(|e| panic!("encode {format:?}: {e}"));
    out.into_inner()
}

pub fn gradient(width: u32, height: u32, seed: u8) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        Rgb([
            (x as u8).wrapping_mul(3).wrapping_add(seed),
            (y as u8).wrapping_mul(5),
            seed ^ (x as u8 & y as u8),
        ])
    })
}

pub fn png(width: u32, height: u32, seed: u8) -> Vec<u8> {
    encode(&gradient(width, height, seed).into(), ImageFormat::Png)
}

pub fn jpeg(width: u32, height: u32, seed: u8) -> Vec<u8> {
    encode(&gradient(width, height, seed).into(), ImageFormat::Jpeg)
}

/// Incompressible pixels, so the encoded size is about 3 bytes per pixel.
pub fn noise_png(width: u32, height: u32) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let image = RgbImage::from_fn(width, height, |_, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let b = state.to_le_bytes();
        Rgb([b[0], b[1], b[2]])
    });
    encode(&image.into(), ImageFormat::Png)
}

/// A 60×40 image, blue with a red 20×20 block in the top-left corner, so
/// where the block ends up shows which transform was applied.
pub fn marked(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        if x < 20 && y < 20 {
            Rgb([230, 20, 20])
        } else {
            Rgb([20, 40, 220])
        }
    })
}

/// A JPEG carrying an APP1 segment with `exif` (TIFF data), inserted after
/// the JFIF header.
fn jpeg_with_app1(image: &RgbImage, app1_payload: &[u8]) -> Vec<u8> {
    let plain = encode(&image.clone().into(), ImageFormat::Jpeg);
    let mut at = 2;
    if plain.get(2..4) == Some(&[0xFF, 0xE0]) {
        let length = usize::from(u16::from_be_bytes([plain[4], plain[5]]));
        at = 4 + length;
    }
    let mut segment = vec![0xFF, 0xE1];
    let length = u16::try_from(app1_payload.len() + 2).expect("APP1 fits");
    segment.extend_from_slice(&length.to_be_bytes());
    segment.extend_from_slice(app1_payload);
    let mut out = plain[..at].to_vec();
    out.extend_from_slice(&segment);
    out.extend_from_slice(&plain[at..]);
    out
}

/// `Exif\0\0` and a little-endian TIFF header with one IFD entry: the
/// orientation tag.
fn exif_orientation(orientation: u16) -> Vec<u8> {
    let mut exif = b"Exif\0\0".to_vec();
    exif.extend_from_slice(b"II*\0");
    exif.extend_from_slice(&8u32.to_le_bytes()); // IFD0 offset
    exif.extend_from_slice(&1u16.to_le_bytes()); // one entry
    exif.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    exif.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    exif.extend_from_slice(&1u32.to_le_bytes()); // count
    exif.extend_from_slice(&orientation.to_le_bytes());
    exif.extend_from_slice(&[0, 0]); // value padding
    exif.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    exif
}

/// Where the top-left red block of `marked` lands once `orientation` is
/// applied (EXIF semantics: how to turn the stored pixels upright).
fn corner_after(orientation: u16) -> Corner {
    match orientation {
        1 | 5 => Corner::TopLeft,
        2 | 6 => Corner::TopRight,
        3 | 7 => Corner::BottomRight,
        _ => Corner::BottomLeft,
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in bytes {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&u32::try_from(data.len()).expect("chunk").to_be_bytes());
    let mut crc_input = kind.to_vec();
    crc_input.extend_from_slice(data);
    out.extend_from_slice(&crc_input);
    out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
}

/// A zlib stream holding `data` in stored (uncompressed) deflate blocks.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(65_535).collect()
    };
    let last = blocks.len() - 1;
    for (i, block) in blocks.into_iter().enumerate() {
        out.push(u8::from(i == last));
        let len = u16::try_from(block.len()).expect("block");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

/// A hand-made PNG: the given header fields, optional palette and raw
/// (unfiltered) scanline data.
fn raw_png(
    width: u32,
    height: u32,
    bit_depth: u8,
    color_type: u8,
    palette: Option<&[u8]>,
    data: &[u8],
) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[bit_depth, color_type, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    if let Some(palette) = palette {
        chunk(&mut out, b"PLTE", palette);
    }
    chunk(&mut out, b"IDAT", &zlib_stored(data));
    chunk(&mut out, b"IEND", &[]);
    out
}

/// 8-bit palette PNG of `width`×`height` with a four-colour palette.
fn palette_png(width: u32, height: u32) -> Vec<u8> {
    let palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255];
    let mut data = Vec::new();
    for y in 0..height {
        data.push(0); // filter: none
        for x in 0..width {
            data.push(((x / 4 + y / 4) % 4) as u8);
        }
    }
    raw_png(width, height, 8, 3, Some(&palette), &data)
}

/// A few hundred bytes declaring `width`×`height` RGB pixels: whoever
/// trusts the header allocates gigabytes.
fn bomb_png(width: u32, height: u32) -> Vec<u8> {
    let row = [0u8; 1 + 3 * 64];
    let data: Vec<u8> = row.iter().copied().cycle().take(row.len() * 4).collect();
    raw_png(width, height, 8, 2, None, &data)
}

fn gif_animation() -> Vec<u8> {
    use image::codecs::gif::{GifEncoder, Repeat};
    use image::{Delay, Frame, Rgba, RgbaImage};
    let mut out = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut out);
        encoder.set_repeat(Repeat::Infinite).expect("repeat");
        for i in 0..3u8 {
            let frame = RgbaImage::from_fn(40, 30, |x, _| Rgba([i * 80, x as u8 * 6, 100, 255]));
            encoder
                .encode_frame(Frame::from_parts(
                    frame,
                    0,
                    0,
                    Delay::from_numer_denom_ms(100, 1),
                ))
                .expect("gif frame");
        }
    }
    out
}

fn cmyk_jpeg(width: u16, height: u16) -> Vec<u8> {
    let mut pixels = Vec::with_capacity(usize::from(width) * usize::from(height) * 4);
    for y in 0..height {
        for x in 0..width {
            pixels.extend_from_slice(&[(x * 4) as u8, (y * 4) as u8, 40, 10]);
        }
    }
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 85)
        .encode(&pixels, width, height, jpeg_encoder::ColorType::Cmyk)
        .expect("CMYK JPEG");
    out
}

const PDF: &[u8] = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n\
2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n";
const HTML: &[u8] = b"<!doctype html><html><body><img src=x onerror=alert(1)>\
<script>alert(document.cookie)</script></body></html>";
const SVG: &[u8] = b"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"100\" height=\"100\">\
<script>alert(1)</script><rect width=\"100\" height=\"100\"/></svg>";

/// A ZIP archive with one stored file, by hand.
fn zip() -> Vec<u8> {
    let name = b"hello.txt";
    let content = b"hello";
    let crc = crc32(content);
    let mut out = Vec::new();
    out.extend_from_slice(b"PK\x03\x04\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00");
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&(content.len() as u32).to_le_bytes());
    out.extend_from_slice(&(content.len() as u32).to_le_bytes());
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(content);
    let central = out.len() as u32;
    out.extend_from_slice(b"PK\x01\x02\x14\x00\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00");
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&(content.len() as u32).to_le_bytes());
    out.extend_from_slice(&(content.len() as u32).to_le_bytes());
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(&[0; 12]);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(name);
    let central_size = out.len() as u32 - central;
    out.extend_from_slice(b"PK\x05\x06\x00\x00\x00\x00\x01\x00\x01\x00");
    out.extend_from_slice(&central_size.to_le_bytes());
    out.extend_from_slice(&central.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// Every case, keys under `prefix`.
pub fn cases(prefix: &str) -> Vec<Case> {
    use Stage::{Ingest, Tagger};
    let k = |name: &str| format!("{prefix}{name}");
    let full_jpeg = jpeg(64, 48, 1);
    let full_png = png(64, 48, 2);
    let mut random = Vec::with_capacity(4096);
    let mut state = 7u32;
    for _ in 0..4096 {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        random.push((state >> 16) as u8);
    }
    let mut out = vec![
        case(
            k("empty.jpg"),
            vec![],
            "image/jpeg",
            rejected(Ingest, "empty"),
        ),
        case(
            k("truncated.jpg"),
            full_jpeg[..full_jpeg.len() / 2].to_vec(),
            "image/jpeg",
            rejected(Tagger, "corrupt or truncated jpeg"),
        ),
        case(
            k("truncated.png"),
            full_png[..full_png.len() / 2].to_vec(),
            "image/png",
            rejected(Tagger, "png"),
        ),
        case(
            k("random.jpg"),
            random.clone(),
            "image/jpeg",
            rejected(Tagger, "not a supported image"),
        ),
        case(
            k("random.bin"),
            random,
            "application/octet-stream",
            rejected(Ingest, "neither the content type"),
        ),
        case(
            k("png named.jpg"),
            png(33, 22, 3),
            "image/jpeg",
            tagged(33, 22),
        ),
        case(
            k("jpeg named.png"),
            jpeg(35, 21, 4),
            "image/png",
            tagged(35, 21),
        ),
        case(k("jpeg.gif"), jpeg(36, 20, 5), "image/gif", tagged(36, 20)),
        case(
            k("pdf.pdf"),
            PDF.to_vec(),
            "application/pdf",
            rejected(Ingest, "application/pdf"),
        ),
        case(
            k("pdf named.jpg"),
            PDF.to_vec(),
            "image/jpeg",
            rejected(Tagger, "not a supported image"),
        ),
        case(
            k("page.html"),
            HTML.to_vec(),
            "text/html",
            rejected(Ingest, "text/html"),
        ),
        case(
            k("page named.png"),
            HTML.to_vec(),
            "image/png",
            rejected(Tagger, "not a supported image"),
        ),
        case(
            k("script.svg"),
            SVG.to_vec(),
            "image/svg+xml",
            rejected(Ingest, "SVG"),
        ),
        case(
            k("archive.zip"),
            zip(),
            "application/zip",
            rejected(Ingest, "application/zip"),
        ),
        case(
            k("archive named.webp"),
            zip(),
            "image/webp",
            rejected(Tagger, "not a supported image"),
        ),
        case(
            k("bomb 50000x50000.png"),
            bomb_png(50_000, 50_000),
            "image/png",
            rejected(Tagger, "too large"),
        ),
        case(
            k("bomb 19000x19000.png"),
            bomb_png(19_000, 19_000),
            "image/png",
            rejected(Tagger, "too large"),
        ),
        case(
            k("over the size limit.png"),
            noise_png(1100, 1000),
            "image/png",
            rejected(Ingest, "limit"),
        ),
        case(
            k("wide 10000x1.png"),
            png(10_000, 1, 6),
            "image/png",
            tagged(10_000, 1),
        ),
        case(
            k("tall 1x10000.png"),
            png(1, 10_000, 7),
            "image/png",
            tagged(1, 10_000),
        ),
        case(k("pixel 1x1.png"), png(1, 1, 8), "image/png", tagged(1, 1)),
        case(
            k("cmyk.jpg"),
            cmyk_jpeg(48, 32),
            "image/jpeg",
            tagged(48, 32),
        ),
        case(
            k("gray.jpg"),
            encode(
                &image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(50, 30, |x, _| {
                    image::Luma([x as u8 * 5])
                })),
                ImageFormat::Jpeg,
            ),
            "image/jpeg",
            tagged(50, 30),
        ),
        case(
            k("sixteen bit.png"),
            encode(
                &image::DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(40, 24, |x, y| {
                    Rgb([x as u16 * 1500, y as u16 * 2500, 40_000])
                })),
                ImageFormat::Png,
            ),
            "image/png",
            tagged(40, 24),
        ),
        case(
            k("palette.png"),
            palette_png(32, 16),
            "image/png",
            tagged(32, 16),
        ),
        case(
            k("animated.gif"),
            gif_animation(),
            "image/gif",
            tagged(40, 30),
        ),
        case(
            k("lossless.webp"),
            encode(&gradient(30, 26, 9).into(), ImageFormat::WebP),
            "image/webp",
            tagged(30, 26),
        ),
        case(
            k("bitmap.bmp"),
            encode(&gradient(20, 18, 10).into(), ImageFormat::Bmp),
            "image/bmp",
            tagged(20, 18),
        ),
        case(
            k("corrupt exif.jpg"),
            jpeg_with_app1(
                &marked(60, 40),
                b"Exif\0\0II*\0\xff\xff\xff\x7f\x05\x00garbage-that-is-not-an-ifd",
            ),
            "image/jpeg",
            tagged(60, 40),
        ),
    ];
    for orientation in 1..=8u16 {
        let (width, height) = if orientation >= 5 { (40, 60) } else { (60, 40) };
        out.push(case(
            k(&format!("exif orientation {orientation}.jpg")),
            jpeg_with_app1(&marked(60, 40), &exif_orientation(orientation)),
            "image/jpeg",
            Expect::Tagged {
                width,
                height,
                red_corner: Some(corner_after(orientation)),
            },
        ));
    }
    // Names: S3 form-encodes keys in events, moto percent-encodes them,
    // file systems have their own limits.
    let small = || png(24, 16, 11);
    out.push(case(
        k("keys/with  two spaces.png"),
        small(),
        "image/png",
        tagged(24, 16),
    ));
    out.push(case(
        k("keys/plus+sign+.png"),
        small(),
        "image/png",
        tagged(24, 16),
    ));
    out.push(case(
        k("keys/percent%41%2B%zz literal.png"),
        small(),
        "image/png",
        tagged(24, 16),
    ));
    out.push(case(
        k("keys/ünïcødé 日本語 🐱.png"),
        small(),
        "image/png",
        tagged(24, 16),
    ));
    out.push(case(
        k("keys/semi;colon&amp=eq?#hash.png"),
        small(),
        "image/png",
        tagged(24, 16),
    ));
    // S3 keys are at most 1024 bytes of UTF-8.
    let mut long = k("keys/long/");
    while long.len() + 81 + "end.png".len() <= 1024 {
        long.push_str(&"é".repeat(40));
        long.push('/');
    }
    while long.len() + "end.png".len() < 1024 {
        long.push('x');
    }
    long.push_str("end.png");
    out.push(Case {
        as_file: false,
        ..case(long, small(), "image/png", tagged(24, 16))
    });
    // Path segments deep enough for a long key that a file system still
    // takes (255 bytes per name).
    let mut deep = k("keys/deep/");
    while deep.len() + 201 + "end.png".len() <= 1000 {
        deep.push_str(&"d".repeat(200));
        deep.push('/');
    }
    deep.push_str("end.png");
    out.push(case(deep, small(), "image/png", tagged(24, 16)));
    out.push(Case {
        as_file: false,
        ..case(
            k("keys/../dot-dot.png"),
            small(),
            "image/png",
            tagged(24, 16),
        )
    });
    out.push(Case {
        as_file: false,
        ..case(
            k("keys/declared text.png"),
            small(),
            "text/plain",
            rejected(Ingest, "text/plain"),
        )
    });
    out.push(Case {
        as_file: false,
        ..case(
            k("keys/no type.png"),
            small(),
            "application/octet-stream",
            tagged(24, 16),
        )
    });
    out
}

/// Which corner of `image` is red (the others blue).
pub fn red_corner(image: &RgbImage) -> Option<Corner> {
    let (w, h) = image.dimensions();
    let probe = |x: u32, y: u32| {
        let p = image.get_pixel(x.min(w - 1), y.min(h - 1));
        p[0] > 150 && p[2] < 100
    };
    let corners = [
        (Corner::TopLeft, probe(3, 3)),
        (Corner::TopRight, probe(w - 4, 3)),
        (Corner::BottomLeft, probe(3, h - 4)),
        (Corner::BottomRight, probe(w - 4, h - 4)),
    ];
    let red: Vec<Corner> = corners
        .iter()
        .filter(|(_, is_red)| *is_red)
        .map(|(c, _)| *c)
        .collect();
    match red.as_slice() {
        [only] => Some(*only),
        _ => None,
    }
}
