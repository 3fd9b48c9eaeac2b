//! IMAP sequence sets for UID commands: sorted UIDs folded into ranges
//! (`1:3,7,9:10`) so a FETCH of thousands of UIDs stays a short line.

pub fn uid_set(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ranges: Vec<String> = Vec::new();
    let mut index = 0;
    while index < sorted.len() {
        let start = sorted[index];
        let mut end = start;
        while index + 1 < sorted.len() && sorted[index + 1] == end + 1 {
            index += 1;
            end = sorted[index];
        }
        ranges.push(if start == end { start.to_string() } else { format!("{start}:{end}") });
        index += 1;
    }
    ranges.join(",")
}

#[cfg(test)]
mod tests {
    use super::uid_set;

    #[test]
    fn ranges_are_folded() {
        assert_eq!(uid_set(&[9, 1, 2, 3, 7, 10, 3]), "1:3,7,9:10");
        assert_eq!(uid_set(&[5]), "5");
        assert_eq!(uid_set(&[]), "");
    }
}
