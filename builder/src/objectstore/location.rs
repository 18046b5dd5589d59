//! `s3://BUCKET/PREFIX`, and where its endpoint, region and credentials
//! come from: flags first, then the environment variables every S3 tool
//! reads (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, `AWS_REGION`,
//! `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`).

use anyhow::{bail, Context, Result};
use boxcar_client::layout::SafeName;
use rusty_s3::Credentials;

/// What the command line says about S3 stores.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Address the bucket as `ENDPOINT/BUCKET/` rather than
    /// `BUCKET.ENDPOINT/` (what most servers other than AWS need).
    pub path_style: bool,
}

/// A store in a bucket, with what it takes to write to it.
#[derive(Clone)]
pub struct S3Location {
    pub endpoint: reqwest::Url,
    pub region: String,
    pub bucket: String,
    /// The store's prefix inside the bucket: empty, or ending in `/`.
    pub prefix: String,
    pub path_style: bool,
    pub credentials: Credentials,
}

impl std::fmt::Debug for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        write!(f, "{} at {}", self.describe(), self.endpoint)
    }
}

impl S3Location {
    /// Parses `s3://BUCKET[/PREFIX]` with `options` and the environment.
    pub fn parse(location: &str, options: &S3Options) -> Result<Self> {
        let rest = location
            .strip_prefix("s3://")
            .with_context(|| format!("{location} is not an s3:// location"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        check_bucket(bucket)?;
        let prefix = prefix.trim_end_matches('/');
        for part in prefix.split('/').filter(|p| !p.is_empty()) {
            SafeName::new("store prefix component", part)?;
        }
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let endpoint = options
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"));
        let region = options
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_owned());
        let endpoint = endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let endpoint = reqwest::Url::parse(&endpoint)
            .with_context(|| format!("the S3 endpoint {endpoint} is not a URL"))?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            bail!("the S3 endpoint {endpoint} must be an http:// or https:// URL");
        }
        let (Some(key), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"))
        else {
            bail!(
                "writing to {location} needs S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            );
        };
        let credentials = match env("AWS_SESSION_TOKEN") {
            Some(token) => Credentials::new_with_token(key, secret, token),
            None => Credentials::new(key, secret),
        };
        // A bucket on an IP address or localhost has no host name of its own.
        let path_style = options.path_style
            || endpoint.host_str().is_some_and(|host| {
                host == "localhost"
                    || host
                        .trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok()
            });
        Ok(Self {
            endpoint,
            region,
            bucket: bucket.to_owned(),
            prefix,
            path_style,
            credentials,
        })
    }

    /// `s3://bucket/prefix/`.
    pub fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

/// S3's rules for bucket names (the subset every server accepts).
fn check_bucket(bucket: &str) -> Result<()> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        bail!("{bucket:?} is not a bucket name: 3 to 63 lowercase letters, digits, '-' or '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_and_prefix_are_checked() {
        assert!(check_bucket("boxcar-releases").is_ok());
        for bad in ["", "ab", "Boxcar", "-x-y", "a/b", "a b c"] {
            assert!(check_bucket(bad).is_err(), "{bad}");
        }
        let options = S3Options {
            endpoint: Some("http://127.0.0.1:9000".into()),
            ..S3Options::default()
        };
        let err = S3Location::parse("s3://bucket/../up", &options).unwrap_err();
        assert!(err.to_string().contains("not allowed"), "{err}");
    }
}
