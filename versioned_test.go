package bento_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	atmigrate "ariga.io/atlas/sql/migrate"
	atmysql "ariga.io/atlas/sql/mysql"
	atpostgres "ariga.io/atlas/sql/postgres"
	atschema "ariga.io/atlas/sql/schema"
	atsqlite "ariga.io/atlas/sql/sqlite"
	"entgo.io/ent/dialect"
	entschema "entgo.io/ent/dialect/sql/schema"
	"entgo.io/ent/schema/field"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/dialects"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/internal/testdb"
)

// TestMigrateVersioned: two diffs (Bento's tables, then the reference
// domain's) write two files and a third writes none; applying them gives
// the schema auto-migration gives, compared table by table by Atlas's
// inspector; applying again and diffing again after apply change nothing.
func TestMigrateVersioned(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		ctx := context.Background()
		db := openDB(t, cfg)
		dir := filepath.Join(t.TempDir(), "migrations")

		f1, err := db.MigrateDiff(ctx, dir, "bento")
		if err != nil || f1 == "" {
			t.Fatalf("first diff = %q, %v; want a file", f1, err)
		}
		f2, err := db.MigrateDiff(ctx, dir, "reference", migrate.Tables...)
		if err != nil || f2 == "" {
			t.Fatalf("second diff = %q, %v; want a file", f2, err)
		}
		if filepath.Base(f2) <= filepath.Base(f1) {
			t.Fatalf("the second file %s does not sort after the first %s", f2, f1)
		}
		if b, _ := os.ReadFile(f2); strings.Contains(string(b), "bento_outbox") {
			t.Errorf("the second file recreates Bento's tables, which the first made:\n%s", b)
		}
		if f, err := db.MigrateDiff(ctx, dir, "nothing", migrate.Tables...); err != nil || f != "" {
			t.Fatalf("a diff with no schema change = %q, %v; want no file", f, err)
		}
		st, err := db.MigrateStatus(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		if st.Applied != 0 || st.Pending != 2 || len(st.Files) != 2 {
			t.Fatalf("status before apply: %+v; want 2 pending", st)
		}

		applied, err := db.MigrateApply(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(applied) != 2 || applied[0].Name != filepath.Base(f1) || applied[1].Name != filepath.Base(f2) {
			t.Fatalf("applied %+v; want %s then %s", applied, f1, f2)
		}
		if again, err := db.MigrateApply(ctx, dir); err != nil || len(again) != 0 {
			t.Fatalf("a second apply = %+v, %v; want nothing to do", again, err)
		}
		if f, err := db.MigrateDiff(ctx, dir, "nothing", migrate.Tables...); err != nil || f != "" {
			t.Fatalf("a diff after apply with no schema change = %q, %v; want no file", f, err)
		}
		st, err = db.MigrateStatus(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		if st.Applied != 2 || st.Pending != 0 || st.Current != st.Files[1].Version {
			t.Fatalf("status after apply: %+v; want 2 applied, current %s", st, st.Files[1].Version)
		}
		for _, f := range st.Files {
			b, err := os.ReadFile(filepath.Join(dir, f.Name))
			if err != nil {
				t.Fatal(err)
			}
			if sum := sha256.Sum256(b); f.Checksum != hex.EncodeToString(sum[:]) || f.Changed || f.AppliedAt.IsZero() || f.StatementsApplied != f.Statements {
				t.Errorf("status of %s: %+v; want applied with checksum %x", f.Name, f, sum)
			}
		}

		// The same tables by auto-migration, in a database of their own.
		auto := testdb.Config(t, cfg.DB.URL.Dialect())
		adb := openDB(t, auto)
		if err := adb.Migrate(ctx, migrate.Tables...); err != nil {
			t.Fatal(err)
		}
		got, want := inspect(t, cfg), inspect(t, auto)
		if _, ok := got.Table(bento.RevisionsTable); !ok {
			t.Fatalf("%s missing after apply", bento.RevisionsTable)
		}
		got.Tables = slicesDelete(got.Tables, bento.RevisionsTable)
		if len(got.Tables) != len(want.Tables) || len(want.Tables) != len(migrate.Tables)+len(db.Tables()) {
			t.Fatalf("tables after apply %v, after auto-migration %v", tableNames(got), tableNames(want))
		}
		got.Name = want.Name
		changes, err := driverFor(t, auto).SchemaDiff(got, want)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range changes {
			t.Errorf("the applied schema differs from auto-migration's: %T %+v", c, c)
		}
	})
}

// TestMigrateApplyRefusesChangedFiles: a file edited after atlas.sum was
// written, and an applied file edited with atlas.sum rewritten to match,
// are both refused with an error naming the file; the data is untouched.
func TestMigrateApplyRefusesChangedFiles(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		ctx := context.Background()
		db := openDB(t, cfg)
		dir := filepath.Join(t.TempDir(), "migrations")
		f1, err := db.MigrateDiff(ctx, dir, "bento", migrate.Tables...)
		if err != nil || f1 == "" {
			t.Fatalf("diff = %q, %v", f1, err)
		}
		if _, err := db.MigrateApply(ctx, dir); err != nil {
			t.Fatal(err)
		}
		seq := db.Names().Sequences
		if err := db.Driver().Exec(ctx, "INSERT INTO "+seq+" (aggregatetype, aggregateid, last_sequence) VALUES ('order', '1', 7)", []any{}, nil); err != nil {
			t.Fatal(err)
		}
		rowIsThere := func() {
			t.Helper()
			var n int
			if err := db.Driver().DB().QueryRowContext(ctx, "SELECT COUNT(*) FROM "+seq+" WHERE last_sequence = 7").Scan(&n); err != nil || n != 1 {
				t.Fatalf("the row written before the refused apply: count %d, %v; want 1", n, err)
			}
		}
		orig, err := os.ReadFile(f1)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f1, append(orig, []byte("DROP TABLE "+seq+";\n")...), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err = db.MigrateApply(ctx, dir)
		if err == nil || !strings.Contains(err.Error(), filepath.Base(f1)) || !strings.Contains(err.Error(), "atlas.sum") {
			t.Fatalf("apply with a file edited behind atlas.sum = %v; want an error naming %s and atlas.sum", err, filepath.Base(f1))
		}
		if _, err := db.MigrateStatus(ctx, dir); err == nil {
			t.Error("status of a directory that does not match its atlas.sum: want an error")
		}
		rowIsThere()

		// Rewrite atlas.sum as `atlas migrate hash` would.
		if err := bento.MigrateHash(dir); err != nil {
			t.Fatal(err)
		}
		_, err = db.MigrateApply(ctx, dir)
		if err == nil || !strings.Contains(err.Error(), filepath.Base(f1)) || !strings.Contains(err.Error(), "applied with checksum") {
			t.Fatalf("apply with an applied file edited = %v; want an error naming %s", err, filepath.Base(f1))
		}
		rowIsThere()
		st, err := db.MigrateStatus(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Files) != 1 || !st.Files[0].Changed || st.Files[0].AppliedChecksum == st.Files[0].Checksum {
			t.Fatalf("status: %+v; want the file marked changed", st)
		}
	})
}

// TestMigrateApplyBaseline: a database auto-migrated before versioned
// migrations were adopted is refused until the files it matches are
// marked applied with a baseline.
func TestMigrateApplyBaseline(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		ctx := context.Background()
		db := openDB(t, cfg)
		if err := db.Migrate(ctx, migrate.Tables...); err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(t.TempDir(), "migrations")
		f1, err := db.MigrateDiff(ctx, dir, "initial", migrate.Tables...)
		if err != nil || f1 == "" {
			t.Fatalf("diff = %q, %v", f1, err)
		}
		if _, err := db.MigrateApply(ctx, dir); err == nil || !strings.Contains(err.Error(), "--baseline") {
			t.Fatalf("apply on an auto-migrated database = %v; want the baseline advice", err)
		}
		version := strings.SplitN(filepath.Base(f1), "_", 2)[0]
		applied, err := db.MigrateApply(ctx, dir, bento.ApplyBaseline(version))
		if err != nil || len(applied) != 0 {
			t.Fatalf("apply with baseline %s = %+v, %v; want nothing executed", version, applied, err)
		}
		st, err := db.MigrateStatus(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		if st.Applied != 1 || !st.Files[0].Baseline || st.Current != version {
			t.Fatalf("status after baseline: %+v", st)
		}
	})
}

// TestMigrateDiffBadInput: names, directories of another dialect and dev
// databases of another dialect are refused with the value and what is
// accepted.
func TestMigrateDiffBadInput(t *testing.T) {
	ctx := context.Background()
	cfg := testdb.Config(t, testdb.SQLite)
	db := openDB(t, cfg)
	dir := t.TempDir()
	for _, tc := range []struct{ dir, name, want string }{
		{filepath.Join(dir, "m"), "add orders", `"add orders"`},
		{filepath.Join(dir, "m"), "", "accepted"},
		{filepath.Join(dir, "postgres"), "x", "named for postgres"},
	} {
		if _, err := db.MigrateDiff(ctx, tc.dir, tc.name); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("MigrateDiff(%s, %q) = %v; want an error with %s", tc.dir, tc.name, err, tc.want)
		}
	}
	if _, err := db.MigrateApply(ctx, filepath.Join(dir, "absent")); err == nil || !strings.Contains(err.Error(), "absent") {
		t.Errorf("MigrateApply on a missing directory = %v; want an error naming it", err)
	}
	pg, err := config.ParseURL("postgres://postgres@127.0.0.1:5432/postgres")
	if err != nil {
		t.Fatal(err)
	}
	other, err := bento.Open(cfg, bento.WithDevURL(pg))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.MigrateDiff(ctx, filepath.Join(dir, "m"), "x"); err == nil || !strings.Contains(err.Error(), "dev database") {
		t.Errorf("MigrateDiff with a PostgreSQL dev database for SQLite = %v; want the dialect error", err)
	}
}

func openDB(t *testing.T, cfg config.Config) *bento.DB {
	t.Helper()
	db, err := bento.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// driverFor opens Atlas's driver on the database of cfg.
func driverFor(t *testing.T, cfg config.Config) atmigrate.Driver {
	t.Helper()
	d, err := dialects.Open(cfg.DB, dialects.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.DB.Close() })
	var drv atmigrate.Driver
	switch d.Dialect {
	case dialect.Postgres:
		drv, err = atpostgres.Open(d.DB)
	case dialect.MySQL:
		drv, err = atmysql.Open(d.DB)
	default:
		drv, err = atsqlite.Open(d.DB)
	}
	if err != nil {
		t.Fatal(err)
	}
	return drv
}

// inspect reads the current schema of the database of cfg.
func inspect(t *testing.T, cfg config.Config) *atschema.Schema {
	t.Helper()
	s, err := driverFor(t, cfg).InspectSchema(context.Background(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func slicesDelete(ts []*atschema.Table, name string) []*atschema.Table {
	var out []*atschema.Table
	for _, t := range ts {
		if t.Name != name {
			out = append(out, t)
		}
	}
	return out
}

func tableNames(s *atschema.Schema) []string {
	var n []string
	for _, t := range s.Tables {
		n = append(n, t.Name)
	}
	return n
}

// TestMigrateApplyFailedFile: a file whose second statement fails is
// reported naming the file; on PostgreSQL and SQLite nothing of it stays
// (one transaction), on MySQL the first statement stays and is recorded,
// and once the failed statement is fixed apply goes on from it; either way
// the fixed file is then applied once.
func TestMigrateApplyFailedFile(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		ctx := context.Background()
		db := openDB(t, cfg)
		dir := filepath.Join(t.TempDir(), "migrations")
		if _, err := db.MigrateDiff(ctx, dir, "bento"); err != nil {
			t.Fatal(err)
		}
		name := "99990101000000_extra.sql"
		write := func(second string) {
			t.Helper()
			body := "CREATE TABLE extra (id integer NOT NULL, PRIMARY KEY (id));\n" + second + "\n"
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := bento.MigrateHash(dir); err != nil {
				t.Fatal(err)
			}
		}
		extraExists := func() bool {
			_, ok := inspect(t, cfg).Table("extra")
			return ok
		}
		write("INSERT INTO no_such_table (id) VALUES (1);")
		applied, err := db.MigrateApply(ctx, dir)
		if err == nil || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "no_such_table") {
			t.Fatalf("apply with a failing statement = %v; want an error naming %s and the statement", err, name)
		}
		if len(applied) != 1 {
			t.Fatalf("applied %+v before the failure; want the first file", applied)
		}
		st, err := db.MigrateStatus(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		f := st.Files[1]
		if db.Dialect() == dialect.MySQL {
			if !extraExists() || f.Applied || f.StatementsApplied != 1 || f.Error == "" {
				t.Fatalf("MySQL: after the failure: table extra exists %v, status %+v; want the first statement applied and the error recorded", extraExists(), f)
			}
		} else if extraExists() || f.Applied || f.StatementsApplied != 0 {
			t.Fatalf("%s: after the failure: table extra exists %v, status %+v; want the file rolled back", db.Dialect(), extraExists(), f)
		}
		write("INSERT INTO extra (id) VALUES (1);")
		applied, err = db.MigrateApply(ctx, dir)
		if err != nil || len(applied) != 1 || applied[0].Name != name {
			t.Fatalf("apply of the fixed file = %+v, %v", applied, err)
		}
		var n int
		if err := db.Driver().DB().QueryRowContext(ctx, "SELECT COUNT(*) FROM extra").Scan(&n); err != nil || n != 1 {
			t.Fatalf("extra holds %d rows (%v); want 1", n, err)
		}
	})
}

// TestMigrateDiffSchemaChange: a column removed and another added make a
// second file that drops and adds them (on SQLite by rebuilding the table,
// which another table references); applying it keeps the rows.
func TestMigrateDiffSchemaChange(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		ctx := context.Background()
		db := openDB(t, cfg)
		dir := filepath.Join(t.TempDir(), "migrations")
		if _, err := db.MigrateDiff(ctx, dir, "notes", notesTables(false)...); err != nil {
			t.Fatal(err)
		}
		if _, err := db.MigrateApply(ctx, dir); err != nil {
			t.Fatal(err)
		}
		for _, q := range []string{
			"INSERT INTO notes (id, body, extra) VALUES (1, 'kept', 'dropped')",
			"INSERT INTO note_tags (id, tag, note_id) VALUES (1, 'a', 1)",
		} {
			if _, err := db.Driver().ExecContext(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		file, err := db.MigrateDiff(ctx, dir, "notes_title", notesTables(true)...)
		if err != nil || file == "" {
			t.Fatalf("diff after the change = %q, %v; want a file", file, err)
		}
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "title") || (db.Dialect() != dialect.SQLite && !strings.Contains(strings.ToUpper(string(b)), "DROP COLUMN")) {
			t.Fatalf("the second file should add title and drop extra:\n%s", b)
		}
		if _, err := db.MigrateApply(ctx, dir); err != nil {
			t.Fatalf("applying\n%s\n%v", b, err)
		}
		var body string
		var tags int
		if err := db.Driver().DB().QueryRowContext(ctx, "SELECT body FROM notes WHERE id = 1 AND title IS NULL").Scan(&body); err != nil || body != "kept" {
			t.Fatalf("the row after the change: %q, %v", body, err)
		}
		if err := db.Driver().DB().QueryRowContext(ctx, "SELECT COUNT(*) FROM note_tags WHERE note_id = 1").Scan(&tags); err != nil || tags != 1 {
			t.Fatalf("the referencing row after the change: %d, %v", tags, err)
		}
		if tbl, ok := inspect(t, cfg).Table("notes"); !ok {
			t.Fatal("notes missing after the change")
		} else if _, ok := tbl.Column("extra"); ok {
			t.Error("column extra still there after the change")
		}
		if f, err := db.MigrateDiff(ctx, dir, "nothing", notesTables(true)...); err != nil || f != "" {
			t.Fatalf("a diff after the change was applied = %q, %v; want no file", f, err)
		}
	})
}

// notesTables are two tables, note_tags referencing notes; changed, notes
// loses extra and gains title.
func notesTables(changed bool) []*entschema.Table {
	id := &entschema.Column{Name: "id", Type: field.TypeInt, Increment: true}
	notes := entschema.NewTable("notes").AddPrimary(id).
		AddColumn(&entschema.Column{Name: "body", Type: field.TypeString, Size: 255})
	if changed {
		notes.AddColumn(&entschema.Column{Name: "title", Type: field.TypeString, Size: 255, Nullable: true})
	} else {
		notes.AddColumn(&entschema.Column{Name: "extra", Type: field.TypeString, Size: 255})
	}
	noteID := &entschema.Column{Name: "note_id", Type: field.TypeInt}
	tags := entschema.NewTable("note_tags").
		AddPrimary(&entschema.Column{Name: "id", Type: field.TypeInt, Increment: true}).
		AddColumn(&entschema.Column{Name: "tag", Type: field.TypeString, Size: 64}).
		AddColumn(noteID).
		AddForeignKey(&entschema.ForeignKey{Symbol: "note_tags_note", Columns: []*entschema.Column{noteID},
			RefTable: notes, RefColumns: []*entschema.Column{id}, OnDelete: entschema.Cascade})
	return []*entschema.Table{notes, tags}
}
