/// Durations in log lines as the config writes them: 500ms, 1.5s, 30s, 5m, 2h.
public enum DurationText {
    public static func of(_ millis: Int64) -> String {
        if millis < 1000 { return "\(millis)ms" }
        if millis % 3_600_000 == 0 { return "\(millis / 3_600_000)h" }
        if millis % 60_000 == 0 && millis >= 60_000 { return "\(millis / 60_000)m" }
        if millis < 60_000 || millis % 1000 != 0 {
            let tenths = (millis + 50) / 100
            return tenths % 10 == 0 ? "\(tenths / 10)s" : "\(tenths / 10).\(tenths % 10)s"
        }
        return "\(millis / 1000)s"
    }
}
