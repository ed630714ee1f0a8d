#include "cityos/subject.h"

#include <vector>

#include "absl/strings/str_format.h"

namespace cityos {
namespace {

std::vector<std::string_view> SplitTokens(std::string_view s) {
  std::vector<std::string_view> tokens;
  size_t start = 0;
  while (true) {
    size_t dot = s.find('.', start);
    if (dot == std::string_view::npos) {
      tokens.push_back(s.substr(start));
      return tokens;
    }
    tokens.push_back(s.substr(start, dot - start));
    start = dot + 1;
  }
}

bool LegalTokenChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         c == '_' || c == '-';
}

// Describes what is wrong with the token `t` (1-based position `pos`) of
// `s`; only called once a problem is known, so it may be slow.
absl::Status TokenError(std::string_view s, bool pattern, size_t pos, std::string_view t) {
  const char* what = pattern ? "pattern" : "subject";
  if (t.empty()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s \"%s\": token %d is empty", what, s, pos));
  }
  if (t == "*" || t == ">") {
    if (!pattern) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "subject \"%s\": token %d is the wildcard \"%s\", which is allowed only in "
          "subscription patterns",
          s, pos, t));
    }
    return absl::InvalidArgumentError(absl::StrFormat(
        "pattern \"%s\": token %d \">\" must be the last token", s, pos));
  }
  if (t.size() > kMaxSubjectTokenLength) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s \"%s\": token %d is too long: %d characters, at most %d",
                        what, s, pos, t.size(), kMaxSubjectTokenLength));
  }
  for (char ch : t) {
    if (!LegalTokenChar(ch)) {
      unsigned char c = static_cast<unsigned char>(ch);
      std::string shown = (c >= 0x21 && c < 0x7f) ? absl::StrFormat("'%c'", c)
                                                   : absl::StrFormat("byte 0x%02x", c);
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s \"%s\": token %d \"%s\" has the illegal character %s (allowed: A-Z a-z "
          "0-9 _ -)",
          what, s, pos, t, shown));
    }
  }
  return absl::InternalError("subject token check disagrees with its error report");
}

// One pass, no allocation: this runs for every published event.
absl::Status Validate(std::string_view s, bool pattern) {
  const char* what = pattern ? "pattern" : "subject";
  if (s.empty()) return absl::InvalidArgumentError(absl::StrFormat("%s is empty", what));
  if (s.size() > kMaxSubjectLength) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s \"%s...\" is too long: %d bytes, at most %d", what, s.substr(0, 32), s.size(),
        kMaxSubjectLength));
  }
  size_t tokens = 1;
  for (char c : s) tokens += c == '.';
  if (tokens > kMaxSubjectTokens) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s \"%s\" has too many tokens: %d, at most %d", what, s, tokens,
        kMaxSubjectTokens));
  }
  size_t start = 0, pos = 1;
  while (true) {
    size_t dot = s.find('.', start);
    bool last = dot == std::string_view::npos;
    std::string_view t = s.substr(start, last ? std::string_view::npos : dot - start);
    bool ok = !t.empty() && t.size() <= kMaxSubjectTokenLength;
    if (ok && t.size() == 1 && (t[0] == '*' || t[0] == '>')) {
      ok = pattern && (t[0] == '*' || last);
    } else {
      for (char c : t) ok = ok && LegalTokenChar(c);
    }
    if (!ok) return TokenError(s, pattern, pos, t);
    if (last) return absl::OkStatus();
    start = dot + 1;
    ++pos;
  }
}

}  // namespace

absl::Status ValidateSubject(std::string_view subject) {
  return Validate(subject, /*pattern=*/false);
}

absl::Status ValidatePattern(std::string_view pattern) {
  return Validate(pattern, /*pattern=*/true);
}

bool SubjectMatches(std::string_view pattern, std::string_view subject) {
  size_t p = 0, s = 0;
  while (true) {
    size_t pe = pattern.find('.', p);
    size_t se = subject.find('.', s);
    std::string_view pt = pattern.substr(p, pe == std::string_view::npos ? pe : pe - p);
    if (pt == ">") return s <= subject.size() && s != std::string_view::npos;
    std::string_view st = subject.substr(s, se == std::string_view::npos ? se : se - s);
    if (pt != "*" && pt != st) return false;
    bool p_end = pe == std::string_view::npos, s_end = se == std::string_view::npos;
    if (p_end || s_end) return p_end && s_end;
    p = pe + 1;
    s = se + 1;
  }
}

bool PatternsOverlap(std::string_view a, std::string_view b) {
  std::vector<std::string_view> ta = SplitTokens(a);
  std::vector<std::string_view> tb = SplitTokens(b);
  size_t i = 0;
  for (; i < ta.size() && i < tb.size(); ++i) {
    if (ta[i] == ">" || tb[i] == ">") return true;
    if (ta[i] != "*" && tb[i] != "*" && ta[i] != tb[i]) return false;
  }
  if (ta.size() == tb.size()) return true;
  // One ran out of tokens: only a trailing ">" on the longer one could still
  // match, and it needs at least one token, which the shorter one lacks.
  return false;
}

}  // namespace cityos
