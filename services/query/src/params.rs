//! Query-string parameters and their validation. Every field arrives as a
//! string so a bad value is reported with the parameter's name rather than as
//! a bare "invalid digit"; unknown and repeated parameters are refused by
//! serde before any of this runs.

use imagetag_shared::model::{ImageStatus, normalize_term};
use imagetag_shared::ports::TermKind;
use serde::Deserialize;

use crate::error::ApiError;
use crate::search::{MatchMode, SearchQuery};

pub const MAX_TAGS_PER_LIST: usize = 10;
pub const MAX_TERMS_PER_QUERY: usize = 20;
pub const MAX_TERM_CHARS: usize = 100;
pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 100;
pub const DEFAULT_TAG_LIMIT: usize = 100;
pub const MAX_TAG_LIMIT: usize = 1000;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Comma-separated tag names (at most 10, each 1–100 characters).
    tags: Option<String>,
    /// `all` (default): images with every tag; `any`: with at least one.
    #[serde(rename = "match")]
    #[param(value_type = Option<MatchParam>, inline)]
    match_mode: Option<String>,
    /// Comma-separated tag names the images must not have.
    exclude: Option<String>,
    /// Lowest confidence (0–100) a tag must have to count.
    #[param(value_type = Option<f32>, minimum = 0, maximum = 100)]
    min_confidence: Option<String>,
    /// Only images with a label in this category.
    category: Option<String>,
    /// `tagged` (default) searches tags; other statuses list records.
    #[param(value_type = Option<ImageStatus>, inline)]
    status: Option<String>,
    /// Page size, 1–100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `next_cursor` of the previous page, for the same query.
    cursor: Option<String>,
}

/// How several tags combine.
#[derive(utoipa::ToSchema)]
#[schema(as = MatchMode, rename_all = "lowercase")]
#[allow(dead_code)] // documentation only: the parameter is parsed by hand
enum MatchParam {
    All,
    Any,
}

/// A validated search: the normalized query (what a cursor is bound to), the
/// page size (free to change between pages) and the cursor.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: SearchQuery,
    pub limit: usize,
    pub cursor: Option<String>,
}

impl SearchParams {
    pub fn validate(self) -> Result<SearchRequest, ApiError> {
        let tags = self
            .tags
            .as_deref()
            .map(|raw| term_list("tags", raw))
            .transpose()?
            .unwrap_or_default();
        let exclude = self
            .exclude
            .as_deref()
            .map(|raw| term_list("exclude", raw))
            .transpose()?
            .unwrap_or_default();
        if tags.len() + exclude.len() > MAX_TERMS_PER_QUERY {
            return Err(ApiError::invalid_parameter(format!(
                "tags and exclude together take at most {MAX_TERMS_PER_QUERY} names"
            )));
        }
        let mode = match self.match_mode.as_deref() {
            None | Some("all") => MatchMode::All,
            Some("any") => MatchMode::Any,
            Some(_) => return Err(ApiError::invalid_parameter("match must be all or any")),
        };
        let min_confidence = match self.min_confidence.as_deref() {
            None => 0.0,
            Some(raw) => match raw.trim().parse::<f32>() {
                Ok(value) if value.is_finite() && (0.0..=100.0).contains(&value) => value,
                _ => {
                    return Err(ApiError::invalid_parameter(
                        "min_confidence must be a number from 0 to 100",
                    ));
                }
            },
        };
        let category = self
            .category
            .as_deref()
            .map(|raw| term("category", raw))
            .transpose()?;
        let status = match self.status.as_deref() {
            None => ImageStatus::Tagged,
            Some(raw) => ImageStatus::parse(raw).ok_or_else(|| {
                ApiError::invalid_parameter(
                    "status must be one of pending, tagged, rejected, failed, deleted",
                )
            })?,
        };
        // Only tagged images have postings; other statuses are plain listings.
        if status != ImageStatus::Tagged
            && (!tags.is_empty() || !exclude.is_empty() || category.is_some())
        {
            return Err(ApiError::invalid_parameter(
                "tags, exclude and category can only be combined with status=tagged",
            ));
        }
        let limit = bounded("limit", self.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
        let cursor = match self.cursor {
            Some(cursor) if cursor.is_empty() => {
                return Err(ApiError::invalid_cursor("cursor is empty"));
            }
            cursor => cursor,
        };
        Ok(SearchRequest {
            query: SearchQuery {
                status,
                mode,
                tags,
                exclude,
                category,
                min_confidence,
            },
            limit,
            cursor,
        })
    }
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TagParams {
    /// Only names starting with this (case-insensitive); sorted by name.
    prefix: Option<String>,
    /// `tag` (default) or `category`.
    #[param(value_type = Option<TermKind>, inline)]
    kind: Option<String>,
    /// At most this many, 1–1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TagRequest {
    pub kind: TermKind,
    /// Normalized; `None` lists the most used terms.
    pub prefix: Option<String>,
    pub limit: usize,
}

impl TagParams {
    pub fn validate(self) -> Result<TagRequest, ApiError> {
        let kind = match self.kind.as_deref() {
            None | Some("tag") => TermKind::Tag,
            Some("category") => TermKind::Category,
            Some(_) => return Err(ApiError::invalid_parameter("kind must be tag or category")),
        };
        let prefix = match self.prefix.as_deref().map(normalize_term) {
            Some(prefix) if prefix.chars().count() > MAX_TERM_CHARS => {
                return Err(ApiError::invalid_parameter(format!(
                    "prefix takes at most {MAX_TERM_CHARS} characters"
                )));
            }
            // An empty prefix is what a search box sends before any typing:
            // it means "no prefix", not an error.
            Some(prefix) if prefix.is_empty() => None,
            prefix => prefix,
        };
        let limit = bounded(
            "limit",
            self.limit.as_deref(),
            DEFAULT_TAG_LIMIT,
            MAX_TAG_LIMIT,
        )?;
        Ok(TagRequest {
            kind,
            prefix,
            limit,
        })
    }
}

/// Image ids are the hex form of a 128-bit hash (`model::image_id`).
pub fn validate_image_id(id: &str) -> Result<(), ApiError> {
    if id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(ApiError::invalid_parameter(
            "image id must be 32 lowercase hexadecimal characters",
        ))
    }
}

/// A comma-separated list of names: normalized, sorted and deduplicated, so
/// equivalent queries are the same query (and share cursors).
fn term_list(parameter: &str, raw: &str) -> Result<Vec<String>, ApiError> {
    let items: Vec<&str> = raw.split(',').collect();
    if items.len() > MAX_TAGS_PER_LIST {
        return Err(ApiError::invalid_parameter(format!(
            "{parameter} takes at most {MAX_TAGS_PER_LIST} names"
        )));
    }
    let mut names = items
        .into_iter()
        .map(|item| term(parameter, item))
        .collect::<Result<Vec<_>, _>>()?;
    names.sort();
    names.dedup();
    Ok(names)
}

fn term(parameter: &str, raw: &str) -> Result<String, ApiError> {
    let name = normalize_term(raw);
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_TERM_CHARS {
        return Err(ApiError::invalid_parameter(format!(
            "each {parameter} name must have 1 to {MAX_TERM_CHARS} characters"
        )));
    }
    Ok(name)
}

fn bounded(
    parameter: &str,
    raw: Option<&str>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    match raw.trim().parse::<usize>() {
        Ok(value) if (1..=max).contains(&value) => Ok(value),
        _ => Err(ApiError::invalid_parameter(format!(
            "{parameter} must be an integer from 1 to {max}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_normalized_sorted_and_deduplicated() {
        let request = SearchParams {
            tags: Some(" Dog ,cat,DOG".into()),
            ..Default::default()
        }
        .validate()
        .map_err(|err| err.to_string());
        assert_eq!(
            request.map(|r| r.query.tags),
            Ok(vec!["cat".to_owned(), "dog".to_owned()])
        );
    }

    #[test]
    fn ids_must_be_lowercase_hex_of_the_right_length() {
        assert!(validate_image_id("0123456789abcdef0123456789abcdef").is_ok());
        for bad in [
            "",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdeg",
            "0123456789abcdef0123456789abcdef0",
        ] {
            assert!(validate_image_id(bad).is_err(), "{bad}");
        }
    }
}
