import CEdgemux

/// What this build is: the version, and the versions of the C libraries it runs on (read from
/// the libraries loaded, not the headers it was built with).
public enum EdgemuxBuild {
    public static let version = "0.1.0"
    public static let openSSL: String = String(cString: OpenSSL_version(Int32(OPENSSL_VERSION_STRING)))
    public static let nghttp2: String = String(cString: nghttp2_version(0).pointee.version_str)
}
