//! Pulling the image: from which registry, with which credentials, and how often.

/// The variable that gives `--image-pull-secret` when the flag is not given.
pub const IMAGE_PULL_SECRET_VAR: &str = "PIPEFORCE_IMAGE_PULL_SECRET";

/// The prefixes of PIPEFORCE's own registry, which the cluster can pull from without a secret:
/// the registry itself and its in-cluster shorthand.
const PIPEFORCE_REGISTRIES: [&str; 2] =
    ["us-east1-docker.pkg.dev/pipeforce/", "pipeforce-registry/"];

/// `imagePullPolicy`: always ask the registry which image the tag names now. A re-deploy of a
/// moving tag such as `latest` then runs what was pushed last, not what the node cached. The
/// cost is one manifest request per container start: layers the node has are not pulled
/// again. (`IfNotPresent` would save that request only for tags that never move, which a tag
/// cannot promise.)
pub const IMAGE_PULL_POLICY: &str = "Always";

/// Whether the cluster pulls `image` from PIPEFORCE's registry.
pub fn in_pipeforce_registry(image: &str) -> bool {
    PIPEFORCE_REGISTRIES
        .iter()
        .any(|prefix| image.starts_with(prefix))
}

/// What to tell the deployer about pulling `image` with `pull_secret`, if anything.
///
/// A warning rather than a refusal: a public image, or a cluster that already holds
/// credentials for the registry, needs no pull secret, and only the deployer knows.
pub fn pull_warning(image: &str, pull_secret: Option<&str>) -> Option<String> {
    if pull_secret.is_some() || in_pipeforce_registry(image) {
        return None;
    }
    Some(format!(
        "the image {image} is not in PIPEFORCE's registry ({}...) and no pull secret is given: \
         unless the image is public or the cluster already holds credentials for its \
         registry, it cannot be pulled and the container will not start (ImagePullBackOff). \
         Name the namespace's secret with the registry's credentials with \
         --image-pull-secret NAME or {IMAGE_PULL_SECRET_VAR}",
        PIPEFORCE_REGISTRIES[0]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_images_outside_pipeforces_registry_without_a_secret_get_a_warning() {
        for image in [
            "us-east1-docker.pkg.dev/pipeforce/acme/orders:1.0",
            "pipeforce-registry/acme/orders:latest",
        ] {
            assert!(in_pipeforce_registry(image), "{image}");
            assert_eq!(pull_warning(image, None), None, "{image}");
        }
        for image in [
            "ghcr.io/acme/orders:1.0",
            "us-east1-docker.pkg.dev/other/acme/orders:1.0",
            "pipeforce/orders:1.0",
        ] {
            assert!(!in_pipeforce_registry(image), "{image}");
            let warning = pull_warning(image, None).expect(image);
            assert!(warning.contains("--image-pull-secret NAME"), "{warning}");
            assert_eq!(pull_warning(image, Some("regcred")), None, "{image}");
        }
    }
}
