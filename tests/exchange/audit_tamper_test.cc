// The tampering table: each way of altering a copy of the log, done as an
// attacker without the key would (record checksums recomputed), is found at
// exactly the entry it affects, with the right fault.
#include <functional>
#include <ostream>

#include "absl/strings/str_cat.h"
#include "audit_test_util.h"
#include "cityos/signing.h"
#include "gmock/gmock.h"

namespace cityos {
namespace {

using audit_internal::EntryHash;
using audit_internal::kCheckpointRecord;
using audit_internal::kEntryRecord;
using audit_test::EntryOf;
using audit_test::FileRecord;
using audit_test::IndexOfEntry;
using audit_test::Payload;
using exchange::v1::AuditFault;
using ::testing::HasSubstr;

using Records = std::vector<FileRecord>;

// Sets e's hash as the writer would, for its current previous_hash.
void Rehash(exchange::v1::AuditEntry* e) {
  e->clear_hash();
  e->set_hash(EntryHash(*e));
}

// Relinks and rehashes every entry from record index `from` on, like an
// attacker rewriting the rest of the chain; checkpoints are left alone unless
// `fix_checkpoint_hashes` (their signatures cannot be recomputed).
void RehashFrom(Records& recs, size_t from, bool fix_checkpoint_hashes) {
  std::string prev;
  for (size_t i = 0; i < recs.size(); ++i) {
    if (recs[i].type == kEntryRecord) {
      auto e = EntryOf(recs[i]);
      if (i >= from) {
        if (!prev.empty()) e.set_previous_hash(prev);
        Rehash(&e);
        recs[i].payload = Payload(e);
      }
      prev = e.hash();
    } else if (i >= from && fix_checkpoint_hashes) {
      auto c = audit_test::CheckpointOf(recs[i]);
      c.set_hash(prev);
      recs[i].payload = Payload(c);
    }
  }
}

struct TamperCase {
  std::string name;
  std::function<void(Records&)> tamper;
  uint64_t first_bad;
  AuditFault fault;
  std::string message_part;
  uint64_t last_good_checkpoint;
};

void PrintTo(const TamperCase& c, std::ostream* os) { *os << c.name; }

class AuditTamper : public ::testing::TestWithParam<TamperCase> {};

TEST_P(AuditTamper, VerifyFindsIt) {
  const TamperCase& tc = GetParam();
  testing::TempDir tmp;
  {
    AuditOptions o;
    o.dir = tmp.path();
    o.node = "n1";
    o.checkpoint_every = 5;
    o.checkpoint_interval = absl::Hours(1);
    auto log = AuditLog::Open(o);
    ASSERT_TRUE(log.ok()) << log.status();
    for (int i = 1; i <= 20; ++i) {
      (*log)->Append(audit_test::MakeEntry("spiffe://demo.city/org/a/svc/x", "read",
                                           absl::StrCat("entry ", i)));
    }
    ASSERT_TRUE((*log)->Close().ok());  // checkpoints 5, 10, 15, 20
  }
  const std::string pub = testing::ReadFile(tmp.File("signing.key.pub"));
  auto before = VerifyAuditDir(tmp.path(), pub);
  ASSERT_TRUE(before.ok());
  ASSERT_TRUE(before->ok()) << before->message();
  ASSERT_EQ(before->checkpoints_checked(), 4u);

  Records recs = audit_test::ReadRecords(tmp.path());
  tc.tamper(recs);
  audit_test::WriteRecords(recs);

  auto v = VerifyAuditDir(tmp.path(), pub);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_FALSE(v->ok());
  EXPECT_EQ(v->first_bad_sequence(), tc.first_bad) << v->message();
  EXPECT_EQ(v->fault(), tc.fault) << v->message();
  EXPECT_THAT(v->message(), HasSubstr(tc.message_part));
  EXPECT_THAT(v->message(), HasSubstr("audit-"));  // names the file
  EXPECT_EQ(v->last_good_checkpoint().sequence(), tc.last_good_checkpoint);
}

TamperCase Edit() {
  return {"edit",
          [](Records& r) {
            const int i = IndexOfEntry(r, 7);
            auto e = EntryOf(r[i]);
            e.set_reason("nothing to see here");
            r[i].payload = Payload(e);
          },
          7, exchange::v1::AUDIT_FAULT_HASH_MISMATCH, "entry 7 has hash", 5};
}
TamperCase EditPreviousHash() {
  return {"edit_previous_hash",
          [](Records& r) {
            const int i = IndexOfEntry(r, 12);
            auto e = EntryOf(r[i]);
            e.set_previous_hash(std::string(32, 'z'));
            r[i].payload = Payload(e);
          },
          12, exchange::v1::AUDIT_FAULT_HASH_MISMATCH, "edited", 10};
}
TamperCase Delete() {
  return {"delete", [](Records& r) { r.erase(r.begin() + IndexOfEntry(r, 7)); }, 8,
          exchange::v1::AUDIT_FAULT_SEQUENCE_GAP, "entry 8 follows entry 6", 5};
}
TamperCase DeleteAndRenumber() {
  // Entry 7 deleted and every later entry renumbered (and rehashed, without
  // relinking entry "7" to entry 6): the link breaks.
  return {"delete_renumber",
          [](Records& r) {
            const int i7 = IndexOfEntry(r, 7);
            r.erase(r.begin() + i7);
            for (size_t i = i7; i < r.size(); ++i) {
              if (r[i].type != kEntryRecord) continue;
              auto e = EntryOf(r[i]);
              e.set_sequence(e.sequence() - 1);
              Rehash(&e);
              r[i].payload = Payload(e);
            }
          },
          7, exchange::v1::AUDIT_FAULT_CHAIN_BROKEN, "previous_hash", 5};
}
TamperCase Reorder() {
  return {"reorder",
          [](Records& r) { std::swap(r[IndexOfEntry(r, 7)], r[IndexOfEntry(r, 8)]); }, 8,
          exchange::v1::AUDIT_FAULT_SEQUENCE_GAP, "expected 7", 5};
}
TamperCase ReorderAndRenumber() {
  // Contents of 7 and 8 swapped, sequences kept, hashes recomputed.
  return {"reorder_renumber",
          [](Records& r) {
            const int i7 = IndexOfEntry(r, 7), i8 = IndexOfEntry(r, 8);
            auto e7 = EntryOf(r[i7]), e8 = EntryOf(r[i8]);
            std::swap(e7, e8);
            e7.set_sequence(7);
            e8.set_sequence(8);
            Rehash(&e7);
            Rehash(&e8);
            r[i7].payload = Payload(e7);
            r[i8].payload = Payload(e8);
          },
          7, exchange::v1::AUDIT_FAULT_CHAIN_BROKEN, "entry 7 has previous_hash", 5};
}
TamperCase Insert() {
  // A forged entry 8, properly linked to 7, inserted before the real 8.
  return {"insert",
          [](Records& r) {
            const int i7 = IndexOfEntry(r, 7);
            auto e7 = EntryOf(r[i7]);
            auto forged = audit_test::MakeEntry("spiffe://demo.city/org/a/svc/x", "read",
                                                "forged");
            forged.set_sequence(8);
            forged.set_previous_hash(e7.hash());
            Rehash(&forged);
            FileRecord rec = r[i7];
            rec.payload = Payload(forged);
            r.insert(r.begin() + i7 + 1, rec);
          },
          8, exchange::v1::AUDIT_FAULT_SEQUENCE_GAP, "repeated", 5};
}
TamperCase ForgedCheckpoint() {
  return {"forged_checkpoint",
          [](Records& r) {
            auto other = SigningKey::Generate();
            for (auto& rec : r) {
              if (rec.type != kCheckpointRecord) continue;
              auto c = audit_test::CheckpointOf(rec);
              if (c.sequence() != 10) continue;
              c.set_signature(
                  (*other)->Sign(audit_internal::CheckpointMessage(c.sequence(), c.hash())));
              c.set_key_id((*other)->key_id());
              rec.payload = Payload(c);
            }
          },
          10, exchange::v1::AUDIT_FAULT_BAD_SIGNATURE, "does not verify", 5};
}
TamperCase EditAndRehashOne() {
  // The edited entry is consistent in itself; its successor's link breaks.
  return {"edit_rehash_one",
          [](Records& r) {
            const int i = IndexOfEntry(r, 7);
            auto e = EntryOf(r[i]);
            e.set_reason("rewritten");
            Rehash(&e);
            r[i].payload = Payload(e);
          },
          8, exchange::v1::AUDIT_FAULT_CHAIN_BROKEN, "entry 8 has previous_hash", 5};
}
TamperCase EditAndRehashChain() {
  // The whole rest of the chain rewritten consistently: the covering
  // checkpoint's hash no longer matches.
  return {"edit_rehash_chain",
          [](Records& r) {
            const int i = IndexOfEntry(r, 7);
            auto e = EntryOf(r[i]);
            e.set_reason("rewritten");
            r[i].payload = Payload(e);
            RehashFrom(r, i, /*fix_checkpoint_hashes=*/false);
          },
          10, exchange::v1::AUDIT_FAULT_BAD_SIGNATURE, "entries 6..10 were altered", 5};
}
TamperCase EditAndRehashChainAndCheckpoints() {
  // ... and the checkpoints' hashes too: their signatures fail.
  return {"edit_rehash_all",
          [](Records& r) {
            const int i = IndexOfEntry(r, 7);
            auto e = EntryOf(r[i]);
            e.set_reason("rewritten");
            r[i].payload = Payload(e);
            RehashFrom(r, i, /*fix_checkpoint_hashes=*/true);
          },
          10, exchange::v1::AUDIT_FAULT_BAD_SIGNATURE, "does not verify", 5};
}
TamperCase MovedCheckpoint() {
  // The checkpoint of 15 moved after entry 16 (hiding where it belongs).
  return {"moved_checkpoint",
          [](Records& r) {
            const int i15 = IndexOfEntry(r, 15);
            ASSERT_EQ(r[i15 + 1].type, kCheckpointRecord);
            std::swap(r[i15 + 1], r[i15 + 2]);
          },
          15, exchange::v1::AUDIT_FAULT_BAD_SIGNATURE, "does not follow", 10};
}
TamperCase DeleteFirst() {
  return {"delete_first", [](Records& r) { r.erase(r.begin() + IndexOfEntry(r, 1)); }, 2,
          exchange::v1::AUDIT_FAULT_SEQUENCE_GAP, "expected 1", 0};
}

INSTANTIATE_TEST_SUITE_P(Table, AuditTamper,
                         ::testing::Values(Edit(), EditPreviousHash(), Delete(),
                                           DeleteAndRenumber(), Reorder(), ReorderAndRenumber(),
                                           Insert(), ForgedCheckpoint(), EditAndRehashOne(),
                                           EditAndRehashChain(),
                                           EditAndRehashChainAndCheckpoints(), MovedCheckpoint(),
                                           DeleteFirst()),
                         [](const ::testing::TestParamInfo<TamperCase>& info) {
                           return info.param.name;
                         });

// The live log's Verify finds an edit made to its files while it was down
// (before the last checkpoint, so Open accepts the log), and a range that
// ends before the edit verifies.
TEST(AuditTamperLive, VerifyOnTheOpenLog) {
  testing::TempDir tmp;
  AuditOptions o;
  o.dir = tmp.path();
  o.checkpoint_every = 5;
  o.checkpoint_interval = absl::Hours(1);
  {
    auto log = AuditLog::Open(o);
    ASSERT_TRUE(log.ok());
    for (int i = 1; i <= 20; ++i) {
      (*log)->Append(audit_test::MakeEntry("spiffe://demo.city/org/a/svc/x", "read"));
    }
    ASSERT_TRUE((*log)->Close().ok());
  }
  Records recs = audit_test::ReadRecords(tmp.path());
  Edit().tamper(recs);
  audit_test::WriteRecords(recs);
  auto log = AuditLog::Open(o);
  ASSERT_TRUE(log.ok()) << log.status();
  auto v = (*log)->Verify(0, 0);
  ASSERT_TRUE(v.ok());
  EXPECT_FALSE(v->ok());
  EXPECT_EQ(v->first_bad_sequence(), 7u);
  EXPECT_EQ(v->fault(), exchange::v1::AUDIT_FAULT_HASH_MISMATCH);
  EXPECT_EQ(v->entries_checked(), 6u);
  EXPECT_EQ(v->last_good_checkpoint().sequence(), 5u);
  auto before = (*log)->Verify(1, 6);
  EXPECT_TRUE(before->ok()) << before->message();
  auto after = (*log)->Verify(8, 20);
  EXPECT_TRUE(after->ok()) << after->message();
  EXPECT_EQ(after->entries_checked(), 13u);
  EXPECT_EQ(after->checkpoints_checked(), 3u);  // 10, 15, 20 (signed before the edit)
}

}  // namespace
}  // namespace cityos
