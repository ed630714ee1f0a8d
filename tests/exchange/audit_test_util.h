// Helpers of the audit tests: entries, and rewriting log files record by
// record the way an attacker would (valid CRCs, so that the tampering
// reaches the hash and signature checks).
#ifndef CITYOS_TESTS_EXCHANGE_AUDIT_TEST_UTIL_H_
#define CITYOS_TESTS_EXCHANGE_AUDIT_TEST_UTIL_H_

#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "audit/audit_format.h"
#include "cityos/audit.h"
#include "gtest/gtest.h"
#include "testutil.h"

namespace cityos::audit_test {

inline exchange::v1::AuditEntry MakeEntry(const std::string& principal, const std::string& action,
                                          const std::string& reason = "",
                                          exchange::v1::Severity severity =
                                              exchange::v1::SEVERITY_INFO) {
  exchange::v1::AuditEntry e;
  e.set_principal(principal);
  e.set_action(action);
  e.set_resource("carbon.meter.1");
  e.set_reason(reason);
  e.set_severity(severity);
  e.set_decision(exchange::v1::EFFECT_ALLOW);
  return e;
}

struct FileRecord {
  std::string file;  // full path
  uint8_t type = 0;
  std::string payload;
  uint64_t offset = 0;
};

// Every record of the segment files of `dir`, in order. Fails the test on a
// record that does not decode.
inline std::vector<FileRecord> ReadRecords(const std::string& dir) {
  std::vector<FileRecord> out;
  auto paths = audit_internal::ListSegments(dir);
  EXPECT_TRUE(paths.ok()) << paths.status();
  if (!paths.ok()) return out;
  for (const std::string& p : *paths) {
    const std::string data = testing::ReadFile(p);
    size_t pos = 0;
    while (pos < data.size()) {
      audit_internal::Record rec;
      auto r = audit_internal::DecodeRecord(data, pos, &rec);
      EXPECT_EQ(r, audit_internal::DecodeResult::kOk) << p << " offset " << pos;
      if (r != audit_internal::DecodeResult::kOk) return out;
      out.push_back(FileRecord{p, rec.type, std::string(rec.payload), pos});
      pos += rec.size;
    }
  }
  return out;
}

// Rewrites the files of `records` (in order, valid CRCs).
inline void WriteRecords(const std::vector<FileRecord>& records) {
  std::map<std::string, std::string> files;
  for (const FileRecord& r : records) {
    audit_internal::AppendRecord(r.type, r.payload, &files[r.file]);
  }
  for (const auto& [path, data] : files) testing::WriteFile(path, data);
}

inline exchange::v1::AuditEntry EntryOf(const FileRecord& r) {
  exchange::v1::AuditEntry e;
  EXPECT_EQ(r.type, audit_internal::kEntryRecord);
  EXPECT_TRUE(e.ParseFromString(r.payload));
  return e;
}
inline exchange::v1::AuditCheckpoint CheckpointOf(const FileRecord& r) {
  exchange::v1::AuditCheckpoint c;
  EXPECT_EQ(r.type, audit_internal::kCheckpointRecord);
  EXPECT_TRUE(c.ParseFromString(r.payload));
  return c;
}
inline std::string Payload(const google::protobuf::MessageLite& m) {
  m.ByteSizeLong();
  return audit_internal::SerializeDeterministic(m);
}
// Index in `records` of the entry with `sequence`; -1 if none.
inline int IndexOfEntry(const std::vector<FileRecord>& records, uint64_t sequence) {
  for (size_t i = 0; i < records.size(); ++i) {
    if (records[i].type == audit_internal::kEntryRecord &&
        EntryOf(records[i]).sequence() == sequence) {
      return static_cast<int>(i);
    }
  }
  return -1;
}

}  // namespace cityos::audit_test

#endif  // CITYOS_TESTS_EXCHANGE_AUDIT_TEST_UTIL_H_
