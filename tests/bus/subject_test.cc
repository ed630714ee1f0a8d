#include "cityos/subject.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "bus/subject_trie.h"

namespace cityos {
namespace {

using ::testing::HasSubstr;

struct MatchCase {
  const char* pattern;
  const char* subject;
  bool match;
};

TEST(SubjectMatches, Table) {
  const MatchCase cases[] = {
      {"carbon.meter.reading", "carbon.meter.reading", true},
      {"carbon.meter.reading", "carbon.meter.readings", false},
      {"carbon.meter.reading", "carbon.meter", false},
      {"carbon.meter", "carbon.meter.reading", false},
      {"carbon.*.reading", "carbon.meter.reading", true},
      {"carbon.*.reading", "carbon.meter.x.reading", false},
      {"carbon.*", "carbon", false},
      {"*", "carbon", true},
      {"*", "carbon.meter", false},
      {"*.*", "a.b", true},
      {"carbon.>", "carbon.meter", true},
      {"carbon.>", "carbon.meter.reading.quzhou.kecheng", true},
      {"carbon.>", "carbon", false},
      {"carbon.>", "mobility.trip", false},
      {">", "carbon", true},
      {">", "a.b.c", true},
      {"*.meter.>", "carbon.meter.reading.quzhou", true},
      {"*.meter.>", "carbon.meter", false},
      {"carbon.meter.*.quzhou.>", "carbon.meter.reading.quzhou.kecheng", true},
      {"carbon.meter.*.quzhou.>", "carbon.meter.reading.quzhou", false},
      {"a.b", "a.bc", false},
      {"ab", "a", false},
  };
  for (const MatchCase& c : cases) {
    EXPECT_EQ(SubjectMatches(c.pattern, c.subject), c.match)
        << c.pattern << " vs " << c.subject;
  }
}

TEST(ValidateSubject, ErrorsNameTheToken) {
  EXPECT_TRUE(ValidateSubject("carbon.meter.reading.quzhou.kecheng").ok());
  EXPECT_THAT(ValidateSubject("").message(), HasSubstr("subject is empty"));
  EXPECT_THAT(ValidateSubject(".a").message(), HasSubstr("token 1 is empty"));
  EXPECT_THAT(ValidateSubject("a.").message(), HasSubstr("token 2 is empty"));
  EXPECT_THAT(ValidateSubject("a b").message(), HasSubstr("illegal character byte 0x20"));
  EXPECT_THAT(ValidateSubject("a.b/c").message(), HasSubstr("token 2 \"b/c\" has the illegal character '/'"));
  EXPECT_THAT(ValidateSubject("a.*").message(), HasSubstr("token 2 is the wildcard \"*\""));
  EXPECT_THAT(ValidateSubject("a.>").message(), HasSubstr("only in subscription patterns"));
  EXPECT_THAT(ValidateSubject("a.b*").message(), HasSubstr("illegal character '*'"));
  EXPECT_THAT(ValidateSubject(std::string(257, 'a')).message(), HasSubstr("too long"));
  EXPECT_THAT(ValidateSubject("a." + std::string(65, 'b')).message(),
              HasSubstr("token 2 is too long"));
  EXPECT_THAT(ValidateSubject("a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q").message(),
              HasSubstr("too many tokens: 17"));
  EXPECT_TRUE(ValidateSubject("a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p").ok());
}

TEST(ValidatePattern, WildcardRules) {
  EXPECT_TRUE(ValidatePattern("carbon.*.reading").ok());
  EXPECT_TRUE(ValidatePattern("carbon.>").ok());
  EXPECT_TRUE(ValidatePattern(">").ok());
  EXPECT_THAT(ValidatePattern("carbon.>.reading").message(), HasSubstr("must be the last token"));
  EXPECT_THAT(ValidatePattern("carbon.me*").message(), HasSubstr("illegal character '*'"));
  EXPECT_THAT(ValidatePattern("carbon..x").message(), HasSubstr("token 2 is empty"));
}

TEST(PatternsOverlap, Table) {
  EXPECT_TRUE(PatternsOverlap("carbon.>", "carbon.meter"));
  EXPECT_TRUE(PatternsOverlap("carbon.*", "*.meter"));
  EXPECT_TRUE(PatternsOverlap(">", "a"));
  EXPECT_FALSE(PatternsOverlap("carbon.>", "carbon"));
  EXPECT_FALSE(PatternsOverlap("carbon.>", "mobility.>"));
  EXPECT_FALSE(PatternsOverlap("a.*", "a.b.c"));
  EXPECT_TRUE(PatternsOverlap("a.*.c", "a.b.*"));
}

// The trie must agree with the reference matcher on every pattern.
TEST(SubjectTrie, AgreesWithReferenceMatcherOnRandomPatterns) {
  std::mt19937 rng(42);
  const char* tokens[] = {"a", "b", "c", "meter"};
  auto random_subject = [&](bool pattern) {
    int n = 1 + static_cast<int>(rng() % 4);
    std::string s;
    for (int i = 0; i < n; ++i) {
      if (i > 0) s += '.';
      int r = static_cast<int>(rng() % 6);
      if (pattern && r == 4) {
        s += '*';
      } else if (pattern && r == 5 && i == n - 1) {
        s += '>';
      } else {
        s += tokens[rng() % 4];
      }
    }
    return s;
  };
  std::vector<std::string> patterns;
  bus_internal::SubjectTrie<int> trie;
  for (int i = 0; i < 300; ++i) {
    patterns.push_back(random_subject(true));
    ASSERT_TRUE(ValidatePattern(patterns.back()).ok()) << patterns.back();
    trie.Insert(patterns.back(), i);
  }
  EXPECT_EQ(trie.size(), 300u);
  for (int k = 0; k < 2000; ++k) {
    std::string subject = random_subject(false);
    std::vector<int> got;
    trie.Match(subject, &got);
    std::sort(got.begin(), got.end());
    std::vector<int> want;
    for (int i = 0; i < 300; ++i) {
      if (SubjectMatches(patterns[i], subject)) want.push_back(i);
    }
    ASSERT_EQ(got, want) << subject;
  }
}

}  // namespace
}  // namespace cityos
