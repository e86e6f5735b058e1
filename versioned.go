package bento

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	"ariga.io/atlas/sql/migrate"
	atmysql "ariga.io/atlas/sql/mysql"
	atpostgres "ariga.io/atlas/sql/postgres"
	atschema "ariga.io/atlas/sql/schema"
	atsqlite "ariga.io/atlas/sql/sqlite"
	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"
	"entgo.io/ent/dialect/sql/schema"
	"entgo.io/ent/schema/field"

	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/dialects"
)

// RevisionsTable is the table MigrateApply records applied migration files
// in, one row per file: its version, the statements applied, when, and the
// SHA-256 of the file as it was applied.
const RevisionsTable = "bento_schema_revisions"

// DefaultMigrationDir returns the migration directory used when none is
// given: migrations/<dialect> (migrations/postgres, migrations/mysql,
// migrations/sqlite3). A directory holds the files of one dialect.
func DefaultMigrationDir(dialectName string) string {
	return filepath.Join("migrations", dialectName)
}

// WithDevURL names the dev database MigrateDiff replays the migration
// directory on to compute the current state: a clean (empty) database of
// the same dialect, which MigrateDiff fills and empties again. Without it
// MigrateDiff uses a temporary database it creates on the server of DB_URL
// and drops afterwards (PostgreSQL, MySQL: the DB_URL user needs the right
// to create databases), or a private in-memory database (SQLite).
func WithDevURL(u config.URL) Option { return func(o *options) { o.devURL = u } }

// migrationName is what MigrateDiff accepts as a file name.
var migrationName = regexp.MustCompile(`^[A-Za-z0-9_]{1,100}$`)

// MigrateDiff writes a new migration file to dir for the difference between
// the desired schema (the given tables, a generated ent/migrate package's
// Tables, plus Bento's own) and the schema the files already in dir
// create, and updates dir's atlas.sum. It returns the new file's path, or
// "" when the directory is already up to date (no file is written).
//
// The files are named <version>_<name>.sql, the version being the UTC time
// (20060102150405) or, if that is not after the newest file's, the next
// number. dir is created if missing; it must hold files of db's dialect
// only. MigrateDiff refuses a directory whose atlas.sum does not match its
// files. It does not touch db's database: the files are replayed on a dev
// database (see WithDevURL). Columns and indexes removed from the schema
// are dropped by the new file: review it before committing it. Tables
// removed from the schema are left alone (ent never plans a DROP TABLE):
// drop them in a file of your own.
func (db *DB) MigrateDiff(ctx context.Context, dir, name string, tables ...*schema.Table) (string, error) {
	if !migrationName.MatchString(name) {
		return "", fmt.Errorf("bento: migrate diff: name %q: accepted: 1 to 100 letters, digits and underscores (e.g. add_orders)", name)
	}
	if err := db.checkDirDialect(dir); err != nil {
		return "", fmt.Errorf("bento: migrate diff: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("bento: migrate diff: creating the migration directory: %w", err)
	}
	ldir, err := migrate.NewLocalDir(dir)
	if err != nil {
		return "", fmt.Errorf("bento: migrate diff: %w", err)
	}
	if err := validateDir(ldir, dir); err != nil {
		return "", fmt.Errorf("bento: migrate diff: %w", err)
	}
	before, err := ldir.Files()
	if err != nil {
		return "", fmt.Errorf("bento: migrate diff: reading %s: %w", dir, err)
	}
	dev, drop, err := db.openDev(ctx)
	if err != nil {
		return "", err
	}
	defer drop()
	all := append(append([]*schema.Table(nil), tables...), db.tables...)
	m, err := schema.NewMigrate(entsql.OpenDB(db.db.Dialect, dev.DB),
		schema.WithDir(ldir),
		schema.WithFormatter(formatter(before)),
		schema.WithMigrationMode(schema.ModeReplay),
		schema.WithDropColumn(true),
		schema.WithDropIndex(true),
		schema.WithForeignKeys(true),
	)
	if err != nil {
		return "", fmt.Errorf("bento: migrate diff: %w", err)
	}
	if err := m.NamedDiff(ctx, name, all...); err != nil {
		return "", fmt.Errorf("bento: migrate diff: computing the %s migration for %s: %w", db.db.Dialect, dir, err)
	}
	after, err := ldir.Files()
	if err != nil {
		return "", fmt.Errorf("bento: migrate diff: reading %s: %w", dir, err)
	}
	for _, f := range after {
		if !slices.ContainsFunc(before, func(b migrate.File) bool { return b.Name() == f.Name() }) {
			return filepath.Join(dir, f.Name()), nil
		}
	}
	return "", nil
}

// MigrateHash rewrites dir's atlas.sum for the files dir holds now, as
// `atlas migrate hash` does: after a file was written or edited by hand,
// before it is applied anywhere. It needs no database. An applied file
// edited afterwards is still refused by MigrateApply, whose revisions keep
// each file's checksum.
func MigrateHash(dir string) error {
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return fmt.Errorf("bento: migrate hash: migration directory %s not found", dir)
	}
	ldir, err := migrate.NewLocalDir(dir)
	if err != nil {
		return fmt.Errorf("bento: migrate hash: %w", err)
	}
	sum, err := ldir.Checksum()
	if err != nil {
		return fmt.Errorf("bento: migrate hash: reading %s: %w", dir, err)
	}
	if err := migrate.WriteSumFile(ldir, sum); err != nil {
		return fmt.Errorf("bento: migrate hash: writing %s: %w", filepath.Join(dir, migrate.HashFileName), err)
	}
	return nil
}

// formatter is Atlas's default file format with versions that always sort
// after the existing files', even for two diffs within a second.
func formatter(existing []migrate.File) migrate.Formatter {
	version := func() string {
		v := time.Now().UTC().Format("20060102150405")
		if len(existing) == 0 {
			return v
		}
		last := existing[len(existing)-1].Version()
		if len(last) < len(v) || (len(last) == len(v) && last < v) {
			return v
		}
		if n, err := strconv.ParseUint(last, 10, 64); err == nil {
			return strconv.FormatUint(n+1, 10)
		}
		return last + "1"
	}
	name := template.Must(template.New("name").Funcs(template.FuncMap{"version": version}).
		Parse("{{ version }}{{ with .Name }}_{{ . }}{{ end }}.sql"))
	return migrate.TemplateFormatter{{N: name, C: migrate.DefaultFormatter[0].C}}
}

// checkDirDialect refuses a directory named after another dialect
// (migrations/postgres used with SQLite, say).
func (db *DB) checkDirDialect(dir string) error {
	names := map[string]string{
		"postgres": dialect.Postgres, "postgresql": dialect.Postgres, "pg": dialect.Postgres,
		"mysql": dialect.MySQL, "mariadb": dialect.MySQL,
		"sqlite": dialect.SQLite, "sqlite3": dialect.SQLite,
	}
	if d, ok := names[strings.ToLower(filepath.Base(filepath.Clean(dir)))]; ok && d != db.db.Dialect {
		return fmt.Errorf("directory %s is named for %s but DB_URL is %s; a directory holds one dialect's files (accepted: e.g. %s)",
			dir, d, db.db.Dialect, DefaultMigrationDir(db.db.Dialect))
	}
	return nil
}

// validateDir checks dir against its atlas.sum and names the offending
// file.
func validateDir(ldir *migrate.LocalDir, dir string) error {
	err := migrate.Validate(ldir)
	var ce *migrate.ChecksumError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ce):
		return fmt.Errorf("%s does not match %s: file %s was %s since atlas.sum was written; migration files must not be changed by hand (write a new migration instead, or, for a file not applied anywhere yet, rewrite atlas.sum with bento migrate hash)",
			filepath.Join(dir, migrate.HashFileName), dir, ce.File, ce.Reason)
	case errors.Is(err, migrate.ErrChecksumNotFound):
		return fmt.Errorf("%s has migration files but no %s: the directory is written by bento migrate diff, which keeps atlas.sum", dir, migrate.HashFileName)
	default:
		return fmt.Errorf("checking %s against %s: %w", dir, migrate.HashFileName, err)
	}
}

// openDev opens the dev database MigrateDiff replays files on, and returns
// what closes (and, when MigrateDiff created it, drops) it.
func (db *DB) openDev(ctx context.Context) (*dialects.Database, func(), error) {
	cfg := db.cfg.DB
	opts := dialects.Options{Logger: db.logger, DialContext: db.dial}
	if !db.devURL.IsZero() {
		if d := db.devURL.Dialect(); d != db.db.Dialect {
			return nil, nil, fmt.Errorf("bento: migrate diff: the dev database %s is %s but DB_URL is %s; accepted: a clean database of the same dialect", db.devURL, d, db.db.Dialect)
		}
		cfg.URL = db.devURL
		dev, err := dialects.Open(cfg, opts)
		if err != nil {
			return nil, nil, fmt.Errorf("bento: migrate diff: the dev database: %w", err)
		}
		return dev, func() { dev.DB.Close() }, nil
	}
	if db.db.Dialect == dialect.SQLite {
		u, err := config.ParseURL(":memory:")
		if err != nil {
			return nil, nil, err
		}
		cfg.URL = u
		dev, err := dialects.Open(cfg, opts)
		if err != nil {
			return nil, nil, fmt.Errorf("bento: migrate diff: the in-memory dev database: %w", err)
		}
		return dev, func() { dev.DB.Close() }, nil
	}
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, nil, err
	}
	name := "bento_dev_" + hex.EncodeToString(b[:])
	quoted := dialects.QuoteIdent(db.db.Dialect, name)
	if _, err := db.db.DB.ExecContext(ctx, "CREATE DATABASE "+quoted); err != nil {
		return nil, nil, fmt.Errorf("bento: migrate diff: creating the temporary dev database %s on the DB_URL server: %w (give the DB_URL user the right to create databases, or name a clean dev database with --dev-url)", name, err)
	}
	dropDB := func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if _, err := db.db.DB.ExecContext(dctx, "DROP DATABASE IF EXISTS "+quoted); err != nil {
			db.logger.Warn("bento: migrate diff: dropping the temporary dev database failed; drop it by hand", "database", name, "error", err)
		}
	}
	u := db.cfg.DB.URL.Server()
	u.Path = "/" + name
	parsed, err := config.ParseURL(u.String())
	if err != nil {
		dropDB()
		return nil, nil, err
	}
	cfg.URL = parsed
	dev, err := dialects.Open(cfg, opts)
	if err != nil {
		dropDB()
		return nil, nil, fmt.Errorf("bento: migrate diff: the temporary dev database: %w", err)
	}
	return dev, func() { dev.DB.Close(); dropDB() }, nil
}

// MigrationFile is a file of a migration directory and its state in a
// database.
type MigrationFile struct {
	// Name is the file's name, <version>_<description>.sql.
	Name        string `json:"name"`
	Version     string `json:"version"`
	Description string `json:"description"`
	// Checksum is the SHA-256 of the file as it is now (hex, as sha256sum
	// prints it).
	Checksum string `json:"checksum"`
	// Applied: every statement of the file was applied (or the file was
	// marked applied by a baseline).
	Applied bool `json:"applied"`
	// Baseline: the file was marked applied, not executed.
	Baseline bool `json:"baseline,omitempty"`
	// AppliedAt is when the file was applied (zero if pending).
	AppliedAt time.Time `json:"applied_at,omitzero"`
	// Statements is the number of statements in the file; StatementsApplied
	// how many of them were applied (less only after a failed attempt on
	// MySQL, whose DDL is not transactional).
	Statements        int `json:"statements"`
	StatementsApplied int `json:"statements_applied"`
	// Error is the error of the last failed attempt at the file.
	Error string `json:"error,omitempty"`
	// Changed: the file was applied with another checksum (AppliedChecksum):
	// it was edited after being applied, which MigrateApply refuses.
	Changed         bool   `json:"changed,omitempty"`
	AppliedChecksum string `json:"applied_checksum,omitempty"`
}

// MigrationStatus is the state of a migration directory in a database.
type MigrationStatus struct {
	Dir     string `json:"dir"`
	Dialect string `json:"dialect"`
	// Current is the version of the last applied file ("" if none).
	Current string `json:"current"`
	Applied int    `json:"applied"`
	Pending int    `json:"pending"`
	// Files are the directory's files in order, then revisions whose file
	// is no longer in the directory (Name "", Changed).
	Files []MigrationFile `json:"files"`
}

// ApplyOption configures MigrateApply.
type ApplyOption func(*applyOptions)

type applyOptions struct{ baseline string }

// ApplyBaseline marks the files up to and including version as applied
// without executing them, the first time MigrateApply runs on a database
// whose schema already exists (one made by Migrate, say). It is needed
// only then: on a database with tables and no revisions MigrateApply
// refuses to start without it.
func ApplyBaseline(version string) ApplyOption {
	return func(o *applyOptions) { o.baseline = version }
}

// MigrateApply applies the files of dir that the database has not applied
// yet, in version order, each in a transaction on PostgreSQL and SQLite
// (MySQL commits DDL statement by statement: a failed file is resumed at
// the failed statement), and records each in RevisionsTable with its
// checksum. It runs under the same lock as Migrate, so several processes
// may apply at once: one applies, the others wait and then find nothing to
// do. It returns the files it applied (none when up to date).
//
// It refuses, changing nothing, a directory whose atlas.sum does not match
// its files, an applied file whose content changed since it was applied,
// a revision whose file is missing, and a database with tables but no
// revisions (see ApplyBaseline). Errors name the file.
func (db *DB) MigrateApply(ctx context.Context, dir string, opts ...ApplyOption) ([]MigrationFile, error) {
	var o applyOptions
	for _, opt := range opts {
		opt(&o)
	}
	ldir, err := db.openDir(dir)
	if err != nil {
		return nil, fmt.Errorf("bento: migrate apply: %w", err)
	}
	db.migrateMu.Lock()
	defer db.migrateMu.Unlock()
	unlock, err := db.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	m, err := schema.NewMigrate(db.drv, schema.WithForeignKeys(true))
	if err != nil {
		return nil, fmt.Errorf("bento: migrate apply: %w", err)
	}
	if err := m.Create(ctx, revisionsTable()); err != nil {
		return nil, fmt.Errorf("bento: migrate apply: creating %s: %w", RevisionsTable, err)
	}
	release, err := db.pool.Acquire(ctx, true)
	if err != nil {
		return nil, fmt.Errorf("bento: migrate apply: %w", err)
	}
	defer release()
	conn, err := db.db.DB.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("bento: migrate apply: connecting: %w", err)
	}
	defer conn.Close()
	store, err := db.revisionStore(ctx, conn, ldir)
	if err != nil {
		return nil, fmt.Errorf("bento: migrate apply: %w", err)
	}
	st, err := db.status(ctx, dir, ldir, store)
	if err != nil {
		return nil, fmt.Errorf("bento: migrate apply: %w", err)
	}
	if err := st.refuseChanged(); err != nil {
		return nil, fmt.Errorf("bento: migrate apply: %w", err)
	}
	drv, err := atlasDriver(db.db.Dialect, conn)
	if err != nil {
		return nil, fmt.Errorf("bento: migrate apply: %w", err)
	}
	exOpts := []migrate.ExecutorOption{migrate.WithOperatorVersion("bento")}
	if o.baseline != "" {
		exOpts = append(exOpts, migrate.WithBaselineVersion(o.baseline))
	}
	ex, err := migrate.NewExecutor(drv, ldir, store, exOpts...)
	if err != nil {
		return nil, fmt.Errorf("bento: migrate apply: %w", err)
	}
	pending, err := ex.Pending(ctx)
	var notClean *migrate.NotCleanError
	switch {
	case errors.Is(err, migrate.ErrNoPendingFiles):
		return nil, nil
	case errors.As(err, &notClean):
		return nil, fmt.Errorf("bento: migrate apply: the database has tables (%s) but no revisions in %s: if its schema was made by auto-migration (bento migrate) or by hand, mark the files it already matches as applied with --baseline VERSION (bento.ApplyBaseline), e.g. the first file's", notClean.Reason, RevisionsTable)
	case err != nil:
		return nil, fmt.Errorf("bento: migrate apply: %s: %w", dir, err)
	}
	var applied []MigrationFile
	for _, f := range pending {
		start := time.Now()
		if err := db.applyFile(ctx, conn, store, ldir, f); err != nil {
			return applied, fmt.Errorf("bento: migrate apply: %s: %w", filepath.Join(dir, f.Name()), err)
		}
		db.logger.Info("bento: migration applied", "file", f.Name(), "took", time.Since(start).Round(time.Millisecond))
		applied = append(applied, MigrationFile{Name: f.Name(), Version: f.Version(), Description: f.Desc(), Checksum: checksum(f.Bytes()), Applied: true, AppliedAt: start})
	}
	return applied, nil
}

// applyFile executes one file: in a transaction with the revision on
// PostgreSQL and SQLite, statement by statement on MySQL.
func (db *DB) applyFile(ctx context.Context, conn *sql.Conn, store *revisions, ldir migrate.Dir, f migrate.File) (err error) {
	if db.db.Dialect == dialect.MySQL {
		drv, err := atlasDriver(db.db.Dialect, conn)
		if err != nil {
			return err
		}
		ex, err := migrate.NewExecutor(drv, ldir, store, migrate.WithOperatorVersion("bento"))
		if err != nil {
			return err
		}
		return ex.Execute(ctx, f)
	}
	if db.db.Dialect == dialect.SQLite {
		// Files that rebuild a table turn foreign keys off, which SQLite
		// ignores inside a transaction: turn them off around it and check
		// them before committing.
		if _, err := conn.ExecContext(ctx, "PRAGMA foreign_keys = off"); err != nil {
			return err
		}
		defer func() {
			if _, err2 := conn.ExecContext(context.WithoutCancel(ctx), "PRAGMA foreign_keys = on"); err2 != nil {
				err = errors.Join(err, fmt.Errorf("turning foreign keys back on: %w", err2))
			}
		}()
	}
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, tx.Rollback())
		}
	}()
	drv, err := atlasDriver(db.db.Dialect, tx)
	if err != nil {
		return err
	}
	txStore := *store
	txStore.q = tx
	ex, err := migrate.NewExecutor(drv, ldir, &txStore, migrate.WithOperatorVersion("bento"))
	if err != nil {
		return err
	}
	if err := ex.Execute(ctx, f); err != nil {
		return err
	}
	if db.db.Dialect == dialect.SQLite {
		rows, err := tx.QueryContext(ctx, "PRAGMA foreign_key_check")
		if err != nil {
			return err
		}
		violation := rows.Next()
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return err
		}
		if violation {
			return errors.New("the file leaves rows that violate foreign keys (PRAGMA foreign_key_check); nothing was applied")
		}
	}
	return tx.Commit()
}

// MigrateStatus reports which files of dir the database has applied and
// which are pending. It changes nothing and takes no lock. It fails when
// dir's atlas.sum does not match its files; an applied file edited since
// is reported (Changed), not an error.
func (db *DB) MigrateStatus(ctx context.Context, dir string) (MigrationStatus, error) {
	ldir, err := db.openDir(dir)
	if err != nil {
		return MigrationStatus{}, fmt.Errorf("bento: migrate status: %w", err)
	}
	release, err := db.pool.Acquire(ctx, false)
	if err != nil {
		return MigrationStatus{}, fmt.Errorf("bento: migrate status: %w", err)
	}
	defer release()
	conn, err := db.db.DB.Conn(ctx)
	if err != nil {
		return MigrationStatus{}, fmt.Errorf("bento: migrate status: connecting: %w", err)
	}
	defer conn.Close()
	store, err := db.revisionStore(ctx, conn, ldir)
	if err != nil {
		return MigrationStatus{}, fmt.Errorf("bento: migrate status: %w", err)
	}
	st, err := db.status(ctx, dir, ldir, store)
	if err != nil {
		return MigrationStatus{}, fmt.Errorf("bento: migrate status: %w", err)
	}
	return st, nil
}

// openDir opens an existing migration directory and checks its atlas.sum.
func (db *DB) openDir(dir string) (*migrate.LocalDir, error) {
	if err := db.checkDirDialect(dir); err != nil {
		return nil, err
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("migration directory %s not found; accepted: a directory written by bento migrate diff (default %s)", dir, DefaultMigrationDir(db.db.Dialect))
	}
	ldir, err := migrate.NewLocalDir(dir)
	if err != nil {
		return nil, err
	}
	if err := validateDir(ldir, dir); err != nil {
		return nil, err
	}
	return ldir, nil
}

// status joins the directory's files with the recorded revisions.
func (db *DB) status(ctx context.Context, dir string, ldir *migrate.LocalDir, store *revisions) (MigrationStatus, error) {
	st := MigrationStatus{Dir: dir, Dialect: db.db.Dialect}
	files, err := ldir.Files()
	if err != nil {
		return st, fmt.Errorf("reading %s: %w", dir, err)
	}
	revs, err := store.ReadRevisions(ctx)
	if err != nil {
		return st, err
	}
	byVersion := map[string]*migrate.Revision{}
	for _, r := range revs {
		byVersion[r.Version] = r
	}
	for _, f := range files {
		stmts, err := f.StmtDecls()
		if err != nil {
			return st, fmt.Errorf("reading %s: %w", f.Name(), err)
		}
		mf := MigrationFile{Name: f.Name(), Version: f.Version(), Description: f.Desc(), Checksum: checksum(f.Bytes()), Statements: len(stmts)}
		if r, ok := byVersion[f.Version()]; ok {
			delete(byVersion, f.Version())
			mf.Baseline = r.Type == migrate.RevisionTypeBaseline
			mf.Applied = mf.Baseline || r.Applied == r.Total
			mf.StatementsApplied, mf.Error = r.Applied, r.Error
			if mf.Applied {
				mf.AppliedAt = r.ExecutedAt
				st.Current = f.Version()
			}
			// A partly applied file (MySQL) may be fixed after its failed
			// statement: Atlas checks the statements already applied.
			if sum := store.sums[r.Version]; mf.Applied && !mf.Baseline && sum != "" && sum != mf.Checksum {
				mf.Changed, mf.AppliedChecksum = true, sum
			}
		}
		if mf.Applied {
			st.Applied++
		} else {
			st.Pending++
		}
		st.Files = append(st.Files, mf)
	}
	for _, r := range revs {
		if _, missing := byVersion[r.Version]; missing && r.Type != migrate.RevisionTypeBaseline {
			st.Files = append(st.Files, MigrationFile{Version: r.Version, Description: r.Description, Applied: r.Applied == r.Total,
				AppliedAt: r.ExecutedAt, Changed: true, AppliedChecksum: store.sums[r.Version]})
		}
	}
	return st, nil
}

// refuseChanged is the error for applied files that changed or are
// missing, naming the first.
func (st MigrationStatus) refuseChanged() error {
	for _, f := range st.Files {
		switch {
		case f.Changed && f.Name == "":
			return fmt.Errorf("version %s (%s) was applied but its file is no longer in %s; applied migrations must stay in the directory", f.Version, f.Description, st.Dir)
		case f.Changed:
			return fmt.Errorf("%s was applied with checksum %s and now has %s: an applied migration must not be edited (restore it and write a new migration with bento migrate diff)",
				filepath.Join(st.Dir, f.Name), f.AppliedChecksum, f.Checksum)
		}
	}
	return nil
}

// checksum is the hex SHA-256 of a file, as sha256sum prints it.
func checksum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// atlasDriver opens Atlas's driver of the dialect on a connection or
// transaction.
func atlasDriver(dialectName string, q atschema.ExecQuerier) (migrate.Driver, error) {
	switch dialectName {
	case dialect.Postgres:
		return atpostgres.Open(q)
	case dialect.MySQL:
		return atmysql.Open(q)
	case dialect.SQLite:
		return atsqlite.Open(q)
	}
	return nil, fmt.Errorf("no migration driver for dialect %q", dialectName)
}

// revisionsTable is RevisionsTable's definition.
func revisionsTable() *schema.Table {
	text := map[string]string{dialect.MySQL: "longtext", dialect.Postgres: "text", dialect.SQLite: "text"}
	version := &schema.Column{Name: "version", Type: field.TypeString, Size: 255}
	return schema.NewTable(RevisionsTable).
		AddPrimary(version).
		AddColumn(&schema.Column{Name: "description", Type: field.TypeString, Size: 255}).
		AddColumn(&schema.Column{Name: "type", Type: field.TypeInt, Comment: "1 baseline, 2 executed"}).
		AddColumn(&schema.Column{Name: "applied", Type: field.TypeInt, Comment: "statements applied"}).
		AddColumn(&schema.Column{Name: "total", Type: field.TypeInt, Comment: "statements in the file"}).
		AddColumn(&schema.Column{Name: "executed_at", Type: field.TypeTime, SchemaType: map[string]string{dialect.MySQL: "datetime(6)", dialect.Postgres: "timestamptz"}}).
		AddColumn(&schema.Column{Name: "execution_time", Type: field.TypeInt64, Comment: "nanoseconds"}).
		AddColumn(&schema.Column{Name: "error", Type: field.TypeString, SchemaType: text, Nullable: true}).
		AddColumn(&schema.Column{Name: "error_stmt", Type: field.TypeString, SchemaType: text, Nullable: true}).
		AddColumn(&schema.Column{Name: "hash", Type: field.TypeString, Size: 255, Comment: "atlas.sum hash"}).
		AddColumn(&schema.Column{Name: "checksum", Type: field.TypeString, Size: 64, Comment: "SHA-256 of the file as applied"}).
		AddColumn(&schema.Column{Name: "partial_hashes", Type: field.TypeString, SchemaType: text, Nullable: true}).
		AddColumn(&schema.Column{Name: "operator_version", Type: field.TypeString, Size: 255})
}

// revisions is Atlas's RevisionReadWriter on RevisionsTable. It adds the
// file's checksum to each revision it writes.
type revisions struct {
	q       atschema.ExecQuerier
	dialect string
	dir     migrate.Dir
	ident   *migrate.TableIdent
	exists  bool              // the table exists (MigrateStatus may run before it does)
	sums    map[string]string // version → checksum, as read
}

// revisionStore reads the current schema's name (Atlas's clean-database
// check needs it) and whether RevisionsTable exists.
func (db *DB) revisionStore(ctx context.Context, conn *sql.Conn, ldir migrate.Dir) (*revisions, error) {
	var q string
	switch db.db.Dialect {
	case dialect.Postgres:
		q = "SELECT current_schema()"
	case dialect.MySQL:
		q = "SELECT DATABASE()"
	default:
		q = "SELECT 'main'"
	}
	var name string
	if err := conn.QueryRowContext(ctx, q).Scan(&name); err != nil {
		return nil, fmt.Errorf("reading the current schema: %w", err)
	}
	drv, err := atlasDriver(db.db.Dialect, conn)
	if err != nil {
		return nil, err
	}
	s, err := drv.InspectSchema(ctx, "", &atschema.InspectOptions{Tables: []string{RevisionsTable}, Mode: atschema.InspectTables})
	if err != nil {
		return nil, fmt.Errorf("looking for %s: %w", RevisionsTable, err)
	}
	_, exists := s.Table(RevisionsTable)
	return &revisions{q: conn, dialect: db.db.Dialect, dir: ldir, exists: exists,
		ident: &migrate.TableIdent{Name: RevisionsTable, Schema: name}, sums: map[string]string{}}, nil
}

var revisionColumns = []string{"version", "description", "type", "applied", "total", "executed_at", "execution_time",
	"error", "error_stmt", "hash", "checksum", "partial_hashes", "operator_version"}

func (s *revisions) quote(n string) string { return dialects.QuoteIdent(s.dialect, n) }

func (s *revisions) columns() string {
	q := make([]string, len(revisionColumns))
	for i, c := range revisionColumns {
		q[i] = s.quote(c)
	}
	return strings.Join(q, ", ")
}

// Ident implements migrate.RevisionReadWriter.
func (s *revisions) Ident() *migrate.TableIdent { return s.ident }

// ReadRevisions implements migrate.RevisionReadWriter.
func (s *revisions) ReadRevisions(ctx context.Context) ([]*migrate.Revision, error) {
	if !s.exists {
		return nil, nil
	}
	return s.read(ctx, "")
}

// ReadRevision implements migrate.RevisionReadWriter.
func (s *revisions) ReadRevision(ctx context.Context, version string) (*migrate.Revision, error) {
	rs, err := s.read(ctx, version)
	if err != nil {
		return nil, err
	}
	if len(rs) == 0 {
		return nil, migrate.ErrRevisionNotExist
	}
	return rs[0], nil
}

func (s *revisions) read(ctx context.Context, version string) ([]*migrate.Revision, error) {
	q := "SELECT " + s.columns() + " FROM " + s.quote(RevisionsTable)
	var args []any
	if version != "" {
		q += " WHERE " + s.quote("version") + " = " + dialects.Placeholder(s.dialect, 1)
		args = append(args, version)
	}
	rows, err := s.q.QueryContext(ctx, q+" ORDER BY "+s.quote("version"), args...)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", RevisionsTable, err)
	}
	defer rows.Close()
	var out []*migrate.Revision
	for rows.Next() {
		var (
			r                      migrate.Revision
			typ                    int
			took                   int64
			errText, stmt, partial sql.NullString
			sum                    string
		)
		if err := rows.Scan(&r.Version, &r.Description, &typ, &r.Applied, &r.Total, &r.ExecutedAt, &took,
			&errText, &stmt, &r.Hash, &sum, &partial, &r.OperatorVersion); err != nil {
			return nil, fmt.Errorf("reading %s: %w", RevisionsTable, err)
		}
		r.Type, r.ExecutionTime, r.Error, r.ErrorStmt = migrate.RevisionType(typ), time.Duration(took), errText.String, stmt.String
		if partial.Valid && partial.String != "" {
			if err := json.Unmarshal([]byte(partial.String), &r.PartialHashes); err != nil {
				return nil, fmt.Errorf("reading %s: version %s: partial_hashes: %w", RevisionsTable, r.Version, err)
			}
		}
		s.sums[r.Version] = sum
		out = append(out, &r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", RevisionsTable, err)
	}
	return out, nil
}

// WriteRevision implements migrate.RevisionReadWriter: an upsert by
// version, with the checksum of the version's file.
func (s *revisions) WriteRevision(ctx context.Context, r *migrate.Revision) error {
	files, err := s.dir.Files()
	if err != nil {
		return err
	}
	var sum string
	for _, f := range files {
		if f.Version() == r.Version {
			sum = checksum(f.Bytes())
		}
	}
	var partial any
	if len(r.PartialHashes) > 0 {
		b, err := json.Marshal(r.PartialHashes)
		if err != nil {
			return err
		}
		partial = string(b)
	}
	null := func(v string) any {
		if v == "" {
			return nil
		}
		return v
	}
	args := []any{r.Version, r.Description, int(r.Type), r.Applied, r.Total, r.ExecutedAt.UTC(), int64(r.ExecutionTime),
		null(r.Error), null(r.ErrorStmt), r.Hash, sum, partial, r.OperatorVersion}
	ph := make([]string, len(args))
	for i := range ph {
		ph[i] = dialects.Placeholder(s.dialect, i+1)
	}
	q := "INSERT INTO " + s.quote(RevisionsTable) + " (" + s.columns() + ") VALUES (" + strings.Join(ph, ", ") + ")"
	var set []string
	for _, c := range revisionColumns[1:] {
		if s.dialect == dialect.MySQL {
			set = append(set, s.quote(c)+" = VALUES("+s.quote(c)+")")
		} else {
			set = append(set, s.quote(c)+" = excluded."+s.quote(c))
		}
	}
	if s.dialect == dialect.MySQL {
		q += " ON DUPLICATE KEY UPDATE " + strings.Join(set, ", ")
	} else {
		q += " ON CONFLICT (" + s.quote("version") + ") DO UPDATE SET " + strings.Join(set, ", ")
	}
	if _, err := s.q.ExecContext(ctx, q, args...); err != nil {
		return fmt.Errorf("recording version %s in %s: %w", r.Version, RevisionsTable, err)
	}
	s.exists = true
	return nil
}

// DeleteRevision implements migrate.RevisionReadWriter.
func (s *revisions) DeleteRevision(ctx context.Context, version string) error {
	_, err := s.q.ExecContext(ctx, "DELETE FROM "+s.quote(RevisionsTable)+" WHERE "+s.quote("version")+" = "+dialects.Placeholder(s.dialect, 1), version)
	return err
}
