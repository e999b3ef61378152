//! The Amazon Rekognition backend: `DetectLabels` on the image bytes.
//!
//! The bytes travel in the request (`Image.Bytes`) rather than as an S3
//! reference, so the tagger decides exactly which bytes are labelled (the
//! generation it fetched and checked) and the role needs no S3 read right
//! for Rekognition.

use std::io::Cursor;
use std::sync::RwLock;

use async_trait::async_trait;
use aws_sdk_rekognition::Client;
use aws_sdk_rekognition::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_rekognition::operation::detect_labels::{DetectLabelsError, DetectLabelsOutput};
use aws_sdk_rekognition::primitives::Blob;
use aws_sdk_rekognition::types::{
    DetectLabelsFeatureName, DetectLabelsSettings, GeneralLabelsSettings, Image,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use image::codecs::jpeg::JpegEncoder;
use image::metadata::Orientation;
use image::{ExtendedColorType, ImageDecoder, ImageEncoder, ImageFormat, ImageReader, RgbImage};
use imagetag_shared::error::{PortError, PortResult};
use imagetag_shared::model::{BoundingBox, Instance, Label, TagOutput};
use imagetag_shared::ports::{DecodedImage, TaggingBackend};

use crate::policy::BackendFilter;
use crate::pool::CpuPool;

/// Rekognition's limit on `Image.Bytes` (5 MB).
pub const MAX_REQUEST_IMAGE_BYTES: usize = 5 * 1024 * 1024;
/// Long side of a re-encoded image: plenty for labels, and keeps the JPEG
/// well under the byte limit in all but pathological cases.
pub const MAX_REENCODED_SIDE: u32 = 4096;
/// Rekognition's limits on each `GeneralLabels` filter list.
const MAX_FILTER_ITEMS: usize = 100;
const MAX_FILTER_NAME_CHARS: usize = 50;

pub struct RekognitionBackend {
    client: Client,
    min_confidence: f32,
    max_labels: i32,
    settings: Option<DetectLabelsSettings>,
    pool: CpuPool,
    /// `LabelModelVersion` of the latest response: Rekognition reports the
    /// version only with results, and it changes rarely (a model upgrade),
    /// so the latest one is the one that labelled the image in hand.
    model_version: RwLock<String>,
}

impl RekognitionBackend {
    /// `filter` is what may be filtered server-side (see
    /// `Policy::backend_filter`); the per-key rules are applied afterwards.
    pub fn new(client: Client, filter: &BackendFilter, pool: CpuPool) -> Self {
        Self {
            client,
            min_confidence: filter.min_confidence,
            max_labels: i32::try_from(filter.max_labels).unwrap_or(i32::MAX),
            settings: general_labels_settings(filter),
            pool,
            model_version: RwLock::new("unknown".into()),
        }
    }

    /// The bytes to send, and whether they are the original: the original
    /// when Rekognition reads it as we did, otherwise the decoded, upright
    /// pixels as JPEG.
    async fn request_bytes(&self, image: &DecodedImage) -> PortResult<(Vec<u8>, bool)> {
        let fits = image.encoded.len() <= MAX_REQUEST_IMAGE_BYTES;
        let original = || Ok((image.encoded.to_vec(), true));
        let reencoded = || reencode_jpeg(&image.rgb).map(|bytes| (bytes, false));
        match image.format.as_str() {
            // Rekognition applies a JPEG's EXIF orientation itself, so its
            // boxes are relative to the same upright image as ours.
            "jpeg" if fits => original(),
            // It ignores orientation in PNGs, which the decoder honoured
            // (eXIf chunk): only an unrotated PNG may go as it is.
            "png" if fits => {
                self.pool
                    .run_borrowed(|| {
                        if png_orientation(&image.encoded) == Orientation::NoTransforms {
                            original()
                        } else {
                            reencoded()
                        }
                    })
                    .await
            }
            _ => self.pool.run_borrowed(reencoded).await,
        }
    }

    async fn detect(
        &self,
        bytes: Vec<u8>,
    ) -> Result<DetectLabelsOutput, SdkError<DetectLabelsError, HttpResponse>> {
        self.client
            .detect_labels()
            .image(Image::builder().bytes(Blob::new(bytes)).build())
            .features(DetectLabelsFeatureName::GeneralLabels)
            .min_confidence(self.min_confidence)
            .max_labels(self.max_labels)
            .set_settings(self.settings.clone())
            .send()
            .await
    }
}

/// Rekognition refused the bytes themselves (a JPEG or PNG variant it does
/// not read, such as CMYK or 16-bit), which a plain re-encode can cure.
fn refused_bytes(err: &SdkError<DetectLabelsError, HttpResponse>) -> bool {
    matches!(
        err.as_service_error(),
        Some(
            DetectLabelsError::InvalidImageFormatException(_)
                | DetectLabelsError::ImageTooLargeException(_)
        )
    )
}

#[async_trait]
impl TaggingBackend for RekognitionBackend {
    fn name(&self) -> &str {
        "rekognition"
    }

    fn version(&self) -> String {
        self.model_version
            .read()
            .map(|version| version.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    async fn tag(&self, image: &DecodedImage) -> PortResult<TagOutput> {
        let (bytes, original) = self.request_bytes(image).await?;
        let out = match self.detect(bytes).await {
            Ok(out) => out,
            Err(err) if original && refused_bytes(&err) => {
                tracing::info!(
                    error = %DisplayErrorContext(&err),
                    "Rekognition refused the original bytes; retrying with a re-encoded JPEG"
                );
                let bytes = self.pool.run_borrowed(|| reencode_jpeg(&image.rgb)).await?;
                self.detect(bytes).await.map_err(classify)?
            }
            Err(err) => return Err(classify(err)),
        };
        if let Some(version) = out.label_model_version() {
            let mut current = self
                .model_version
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if *current != version {
                *current = version.to_owned();
            }
        }
        Ok(map_output(&out))
    }

    // No ping: Rekognition has no free call to probe with (DetectLabels is
    // billed per image, and the role is granted nothing else), so its
    // failures show up as transient errors on the messages instead.
}

/// `GeneralLabels` filters, or none when the filter has no lists. A list
/// Rekognition would refuse (too long, a name over its length limit) is left
/// to the client-side rules rather than failing every request.
fn general_labels_settings(filter: &BackendFilter) -> Option<DetectLabelsSettings> {
    let usable = |field: &str, names: &[String]| -> Option<Vec<String>> {
        if names.is_empty() {
            return None;
        }
        if names.len() > MAX_FILTER_ITEMS
            || names
                .iter()
                .any(|name| name.chars().count() > MAX_FILTER_NAME_CHARS)
        {
            tracing::warn!(
                field,
                count = names.len(),
                "policy list exceeds Rekognition's filter limits; applied by the tagger only"
            );
            return None;
        }
        Some(names.to_vec())
    };
    let include_labels = usable("include_labels", &filter.include_labels);
    let exclude_labels = usable("exclude_labels", &filter.exclude_labels);
    let include_categories = usable("include_categories", &filter.include_categories);
    let exclude_categories = usable("exclude_categories", &filter.exclude_categories);
    if include_labels.is_none()
        && exclude_labels.is_none()
        && include_categories.is_none()
        && exclude_categories.is_none()
    {
        return None;
    }
    let general = GeneralLabelsSettings::builder()
        .set_label_inclusion_filters(include_labels)
        .set_label_exclusion_filters(exclude_labels)
        .set_label_category_inclusion_filters(include_categories)
        .set_label_category_exclusion_filters(exclude_categories)
        .build();
    Some(
        DetectLabelsSettings::builder()
            .general_labels(general)
            .build(),
    )
}

/// Orientation recorded in a PNG's eXIf chunk. Reads chunks up to the image
/// data only.
fn png_orientation(encoded: &[u8]) -> Orientation {
    ImageReader::with_format(Cursor::new(encoded), ImageFormat::Png)
        .into_decoder()
        .and_then(|mut decoder| decoder.orientation())
        .unwrap_or(Orientation::NoTransforms)
}

/// Encodes upright RGB pixels as a JPEG Rekognition accepts: long side at
/// most `MAX_REENCODED_SIDE`, bytes at most `MAX_REQUEST_IMAGE_BYTES`
/// (lowering the quality, then the size, for images that compress badly).
pub fn reencode_jpeg(rgb: &RgbImage) -> PortResult<Vec<u8>> {
    let mut side = MAX_REENCODED_SIDE;
    while side >= 512 {
        let scaled = fit_within(rgb, side);
        let pixels = scaled.as_ref().unwrap_or(rgb);
        for quality in [90, 80, 70] {
            let mut out = Vec::new();
            JpegEncoder::new_with_quality(&mut out, quality)
                .write_image(
                    pixels.as_raw(),
                    pixels.width(),
                    pixels.height(),
                    ExtendedColorType::Rgb8,
                )
                .map_err(|err| PortError::Invalid(format!("re-encoding as JPEG failed: {err}")))?;
            if out.len() <= MAX_REQUEST_IMAGE_BYTES {
                return Ok(out);
            }
        }
        side = side * 3 / 4;
    }
    Err(PortError::Invalid(
        "the image does not fit Rekognition's 5 MB request limit even when shrunk".into(),
    ))
}

/// A copy scaled so the long side is at most `side`, or `None` when it
/// already fits.
fn fit_within(rgb: &RgbImage, side: u32) -> Option<RgbImage> {
    let (width, height) = rgb.dimensions();
    let long = width.max(height);
    if long <= side {
        return None;
    }
    let scale = |n: u32| ((u64::from(n) * u64::from(side)) / u64::from(long)).max(1) as u32;
    Some(image::imageops::thumbnail(rgb, scale(width), scale(height)))
}

/// Rekognition's answer in our model. Entries missing the fields that make
/// them meaningful (a label without a name, an instance without a box) are
/// skipped rather than invented.
pub fn map_output(out: &DetectLabelsOutput) -> TagOutput {
    let labels = out
        .labels()
        .iter()
        .filter_map(|label| {
            let name = label.name()?.to_owned();
            let names = |items: Vec<Option<&str>>| -> Vec<String> {
                items.into_iter().flatten().map(str::to_owned).collect()
            };
            Some(Label {
                name,
                confidence: label.confidence().unwrap_or(0.0),
                parents: names(label.parents().iter().map(|p| p.name()).collect()),
                aliases: names(label.aliases().iter().map(|a| a.name()).collect()),
                categories: names(label.categories().iter().map(|c| c.name()).collect()),
                instances: label
                    .instances()
                    .iter()
                    .filter_map(|instance| {
                        let bbox = instance.bounding_box()?;
                        Some(Instance {
                            bounding_box: BoundingBox {
                                left: bbox.left()?,
                                top: bbox.top()?,
                                width: bbox.width()?,
                                height: bbox.height()?,
                            },
                            confidence: instance.confidence().unwrap_or(0.0),
                        })
                    })
                    .collect(),
            })
        })
        .collect();
    TagOutput {
        labels,
        ..Default::default()
    }
}

/// Error codes of requests that were not signed or authorised: a deployment
/// problem, not a property of the image.
const CREDENTIAL_CODES: &[&str] = &[
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
];

/// Maps a `DetectLabels` failure by what retrying can achieve. Anything
/// about this image (format, size, parameters) is `Invalid`: retrying cannot
/// help and the record should say why. Throttling, server faults, network
/// trouble and missing permissions are `Unavailable`: the image is fine, so
/// it waits (retried in place) rather than being marked failed while the
/// service or the deployment is fixed.
pub fn classify(err: SdkError<DetectLabelsError, HttpResponse>) -> PortError {
    let message = DisplayErrorContext(&err).to_string();
    match &err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            match service.err() {
                DetectLabelsError::ThrottlingException(_)
                | DetectLabelsError::ProvisionedThroughputExceededException(_)
                | DetectLabelsError::InternalServerError(_)
                | DetectLabelsError::AccessDeniedException(_) => PortError::Unavailable(message),
                DetectLabelsError::InvalidImageFormatException(_)
                | DetectLabelsError::ImageTooLargeException(_)
                | DetectLabelsError::InvalidParameterException(_)
                | DetectLabelsError::InvalidS3ObjectException(_) => PortError::Invalid(message),
                other => {
                    let code = other.code().unwrap_or_default();
                    if status >= 500
                        || status == 429
                        || code.contains("Throttl")
                        || CREDENTIAL_CODES.contains(&code)
                    {
                        PortError::Unavailable(message)
                    } else {
                        PortError::Invalid(message)
                    }
                }
            }
        }
        // The request could not even be built: a bug, and the same every time.
        SdkError::ConstructionFailure(_) => PortError::Invalid(message),
        // Timeouts, connection failures, unreadable responses.
        _ => PortError::Unavailable(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_rekognition::types::error::{
        AccessDeniedException, ImageTooLargeException, InvalidImageFormatException,
        ThrottlingException,
    };
    use aws_sdk_rekognition::types::{
        BoundingBox as SdkBox, Instance as SdkInstance, Label as SdkLabel, LabelAlias,
        LabelCategory, Parent,
    };
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use image::Rgb;

    fn sdk_output() -> DetectLabelsOutput {
        DetectLabelsOutput::builder()
            .label_model_version("3.0")
            .labels(
                SdkLabel::builder()
                    .name("Dog")
                    .confidence(97.5)
                    .parents(Parent::builder().name("Animal").build())
                    .parents(Parent::builder().name("Mammal").build())
                    .aliases(LabelAlias::builder().name("Puppy").build())
                    .categories(LabelCategory::builder().name("Animals and Pets").build())
                    .instances(
                        SdkInstance::builder()
                            .confidence(95.0)
                            .bounding_box(
                                SdkBox::builder()
                                    .left(0.25)
                                    .top(0.5)
                                    .width(0.125)
                                    .height(0.375)
                                    .build(),
                            )
                            .build(),
                    )
                    // A box without coordinates tells nothing and is skipped.
                    .instances(SdkInstance::builder().confidence(40.0).build())
                    .build(),
            )
            .labels(SdkLabel::builder().name("Grass").confidence(80.25).build())
            .labels(SdkLabel::builder().confidence(99.0).build())
            .build()
    }

    #[test]
    fn response_maps_to_our_labels() {
        let output = map_output(&sdk_output());
        assert_eq!(
            output.labels,
            vec![
                Label {
                    name: "Dog".into(),
                    confidence: 97.5,
                    parents: vec!["Animal".into(), "Mammal".into()],
                    aliases: vec!["Puppy".into()],
                    categories: vec!["Animals and Pets".into()],
                    instances: vec![Instance {
                        bounding_box: BoundingBox {
                            left: 0.25,
                            top: 0.5,
                            width: 0.125,
                            height: 0.375,
                        },
                        confidence: 95.0,
                    }],
                },
                Label {
                    name: "Grass".into(),
                    confidence: 80.25,
                    parents: vec![],
                    aliases: vec![],
                    categories: vec![],
                    instances: vec![],
                },
            ]
        );
        assert!(output.text.is_empty() && output.moderation.is_empty() && output.faces.is_empty());
    }

    fn service_error(
        err: DetectLabelsError,
        status: u16,
    ) -> SdkError<DetectLabelsError, HttpResponse> {
        let status = StatusCode::try_from(status).expect("valid status");
        SdkError::service_error(err, HttpResponse::new(status, SdkBody::empty()))
    }

    #[test]
    fn errors_map_by_what_retrying_can_achieve() {
        let throttled = service_error(
            DetectLabelsError::ThrottlingException(ThrottlingException::builder().build()),
            400,
        );
        assert!(matches!(classify(throttled), PortError::Unavailable(_)));

        let format = service_error(
            DetectLabelsError::InvalidImageFormatException(
                InvalidImageFormatException::builder()
                    .message("bad")
                    .build(),
            ),
            400,
        );
        assert!(matches!(classify(format), PortError::Invalid(_)));

        let large = service_error(
            DetectLabelsError::ImageTooLargeException(ImageTooLargeException::builder().build()),
            400,
        );
        assert!(matches!(classify(large), PortError::Invalid(_)));

        let denied = service_error(
            DetectLabelsError::AccessDeniedException(AccessDeniedException::builder().build()),
            403,
        );
        assert!(matches!(classify(denied), PortError::Unavailable(_)));

        let unknown_5xx = service_error(
            DetectLabelsError::generic(
                aws_smithy_types::error::ErrorMetadata::builder()
                    .code("SomethingNew")
                    .build(),
            ),
            503,
        );
        assert!(matches!(classify(unknown_5xx), PortError::Unavailable(_)));

        let bad_credentials = service_error(
            DetectLabelsError::generic(
                aws_smithy_types::error::ErrorMetadata::builder()
                    .code("UnrecognizedClientException")
                    .build(),
            ),
            400,
        );
        assert!(matches!(
            classify(bad_credentials),
            PortError::Unavailable(_)
        ));

        let timeout = SdkError::<DetectLabelsError, HttpResponse>::timeout_error("slow");
        assert!(matches!(classify(timeout), PortError::Unavailable(_)));
    }

    #[test]
    fn settings_carry_the_filter_lists() {
        let mut filter = BackendFilter {
            min_confidence: 50.0,
            max_labels: 25,
            include_labels: vec![],
            exclude_labels: vec![],
            include_categories: vec![],
            exclude_categories: vec![],
        };
        assert!(general_labels_settings(&filter).is_none());

        filter.exclude_labels = vec!["Text".into()];
        filter.include_categories = vec!["Animals and Pets".into()];
        let settings = general_labels_settings(&filter).expect("settings");
        let general = settings.general_labels().expect("general labels");
        assert_eq!(general.label_exclusion_filters(), ["Text"]);
        assert_eq!(
            general.label_category_inclusion_filters(),
            ["Animals and Pets"]
        );
        assert!(general.label_inclusion_filters().is_empty());

        // Over Rekognition's limit: left to the tagger's own rules.
        filter.include_labels = (0..101).map(|i| format!("Label {i}")).collect();
        let settings = general_labels_settings(&filter).expect("settings");
        let general = settings.general_labels().expect("general labels");
        assert!(general.label_inclusion_filters.is_none());
    }

    #[test]
    fn reencoding_downscales_to_the_long_side_limit() {
        let rgb = RgbImage::from_pixel(5000, 400, Rgb([20, 40, 60]));
        let jpeg = reencode_jpeg(&rgb).expect("encodes");
        assert!(jpeg.len() <= MAX_REQUEST_IMAGE_BYTES);
        let decoded = image::load_from_memory_with_format(&jpeg, ImageFormat::Jpeg).expect("jpeg");
        assert_eq!((decoded.width(), decoded.height()), (4096, 327));
    }

    fn backend() -> RekognitionBackend {
        let config = aws_sdk_rekognition::Config::builder()
            .behavior_version(aws_sdk_rekognition::config::BehaviorVersion::latest())
            .region(aws_sdk_rekognition::config::Region::new("us-east-1"))
            .build();
        let filter = crate::policy::Policy::default().backend_filter();
        RekognitionBackend::new(Client::from_conf(config), &filter, CpuPool::new(1))
    }

    fn decoded(format: ImageFormat, rgb: RgbImage) -> DecodedImage {
        let mut encoded = Vec::new();
        rgb.write_to(&mut Cursor::new(&mut encoded), format)
            .expect("encode");
        DecodedImage {
            encoded: encoded.into(),
            rgb,
            format: crate::decode::format_name(format),
        }
    }

    #[tokio::test]
    async fn jpeg_and_png_go_as_they_are_other_formats_as_jpeg() {
        let backend = backend();
        let rgb = RgbImage::from_pixel(100, 90, Rgb([200, 100, 0]));
        for format in [ImageFormat::Jpeg, ImageFormat::Png] {
            let image = decoded(format, rgb.clone());
            let (bytes, original) = backend.request_bytes(&image).await.expect("bytes");
            assert!(original, "{format:?}");
            assert_eq!(bytes, image.encoded.to_vec(), "{format:?}");
        }
        for format in [ImageFormat::Gif, ImageFormat::Bmp, ImageFormat::Tiff] {
            let image = decoded(format, rgb.clone());
            let (bytes, original) = backend.request_bytes(&image).await.expect("bytes");
            assert!(!original, "{format:?}");
            assert_eq!(
                image::guess_format(&bytes).expect("a format"),
                ImageFormat::Jpeg,
                "{format:?}"
            );
        }
        assert_eq!(backend.name(), "rekognition");
        assert_eq!(backend.version(), "unknown");
    }
}
