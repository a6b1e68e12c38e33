#!/usr/bin/perl
# The workload and the checker of scripts/powerloss-test.sh.
#
#   powerloss.pl run DIR JOURNAL SEED [closes]
#                                       mixed metadata and file writes under DIR until killed;
#                                       with `closes` (a mount with --sync-on-close), every
#                                       close counts as an fsync
#   powerloss.pl check DIR JOURNAL      is DIR what some prefix of the journal's ops left?
#   powerloss.pl digest DIR             each path under DIR, its length and checksums
#   powerloss.pl mkdir DIR              makes DIR and fsyncs its parent
#
# `run` appends to JOURNAL (on a disk that keeps it) "begin N OP ARGS" before op N and
# "durable N" once an fsync or fsyncdir covering ops 1..N returned. `check` rebuilds the
# tree each prefix of the ops leaves and passes if DIR equals one of those with at least
# every op an fsync covered and at most every op begun: what a power loss may take is a
# suffix, never an op in the middle, never half an op. Every op is one step of the
# nameserver's log (a file's bytes are committed at its close, with one commit).
use strict;
use warnings;
use Fcntl qw(O_CREAT O_EXCL O_WRONLY O_RDWR O_RDONLY O_DIRECTORY SEEK_SET);
use IO::Handle;

my $mode = shift // '';

# The bytes of a fill or a patch: a pattern nobody else writes.
sub bytes_of {
    my ($tag, $len) = @_;
    my $unit = sprintf('%s/%08x;', $tag, $len);
    return substr($unit x (int($len / length($unit)) + 1), 0, $len);
}

# Applies op `@op` to the model `%$tree` (path => content, undef for a directory).
sub apply {
    my ($tree, $n, $op, @args) = @_;
    if ($op eq 'mkdir') {
        $tree->{$args[0]} = undef;
    } elsif ($op eq 'create') {
        $tree->{$args[0]} = '';
    } elsif ($op eq 'fill') {
        $tree->{$args[0]} = bytes_of("f$n", $args[1]);
    } elsif ($op eq 'patch') {
        my ($path, $at, $len) = @args;
        my $old = $tree->{$path};
        $old .= "\0" x ($at - length($old)) if length($old) < $at;
        substr($old, $at, $len) = bytes_of("p$n", $len);
        $tree->{$path} = $old;
    } elsif ($op eq 'rename') {
        $tree->{$args[1]} = delete $tree->{$args[0]};
    } elsif ($op eq 'unlink') {
        delete $tree->{$args[0]};
    } else {
        die "unknown op $op\n";
    }
}

sub run {
    my ($dir, $journal_path, $seed, $closes) = @_;
    open(my $journal, '>>', $journal_path) or die "open $journal_path: $!\n";
    $journal->autoflush(1);
    my $rand = $seed;
    my $next = sub { $rand = ($rand * 1103515245 + 12345) % 2147483648; return $rand % $_[0] };
    my (%tree, @files, @dirs);
    my $n = 0;
    my $begin = sub { $n++; print $journal "begin $n @_\n"; apply(\%tree, $n, @_); };
    my $durable = sub { print $journal "durable $n\n" };
    while (1) {
        my $pick = $next->(100);
        my $where = @dirs && $next->(2) ? $dirs[$next->(scalar @dirs)] . '/' : '';
        if ($pick < 10) {
            my $d = "${where}d$n";
            $begin->('mkdir', $d);
            mkdir("$dir/$d") or die "mkdir $d: $!\n";
            push @dirs, $d;
            if ($next->(5) == 0) {
                fsync_dir("$dir/$where.");
                $durable->();
            }
        } elsif ($pick < 45 || !@files) {
            my $f = "${where}f$n";
            $begin->('create', $f);
            sysopen(my $h, "$dir/$f", O_CREAT | O_EXCL | O_WRONLY, 0644) or die "create $f: $!\n";
            my $len = 1 + $next->(200_000);
            $begin->('fill', $f, $len);
            my $data = bytes_of("f$n", $len);
            (syswrite($h, $data) // -1) == $len or die "write $f: $!\n";
            if ($next->(10) == 0) {
                $h->sync or die "fsync $f: $!\n";
                $durable->();
            }
            close($h) or die "close $f: $!\n";
            $durable->() if $closes;
            push @files, $f;
        } elsif ($pick < 75) {
            my $f = $files[$next->(scalar @files)];
            my ($at, $len) = ($next->(150_000), 1 + $next->(20_000));
            sysopen(my $h, "$dir/$f", O_RDWR) or die "open $f: $!\n";
            $begin->('patch', $f, $at, $len);
            sysseek($h, $at, SEEK_SET) or die "seek $f: $!\n";
            (syswrite($h, bytes_of("p$n", $len)) // -1) == $len or die "patch $f: $!\n";
            if ($next->(10) == 0) {
                $h->sync or die "fsync $f: $!\n";
                $durable->();
            }
            close($h) or die "close $f: $!\n";
            $durable->() if $closes;
        } elsif ($pick < 90) {
            my $i = $next->(scalar @files);
            my $to = "${where}r$n";
            $begin->('rename', $files[$i], $to);
            rename("$dir/$files[$i]", "$dir/$to") or die "rename $files[$i]: $!\n";
            $files[$i] = $to;
        } else {
            my $i = $next->(scalar @files);
            my $f = splice(@files, $i, 1);
            $begin->('unlink', $f);
            unlink("$dir/$f") or die "unlink $f: $!\n";
        }
    }
}

# path => content (undef for directories) of everything under $dir.
sub scan {
    my ($dir, $prefix, $tree) = @_;
    opendir(my $h, $dir) or die "opendir $dir: $!\n";
    for my $name (sort grep { $_ ne '.' && $_ ne '..' } readdir($h)) {
        my ($path, $rel) = ("$dir/$name", $prefix eq '' ? $name : "$prefix/$name");
        if (-d $path) {
            $tree->{$rel} = undef;
            scan($path, $rel, $tree);
        } else {
            # Every byte read, or the scan fails: a read error must not pass for a file
            # that is shorter (or empty, as it was some ops earlier).
            open(my $f, '<:raw', $path) or die "open $rel: $!\n";
            my $content = '';
            while (1) {
                my $n = sysread($f, $content, 1 << 20, length $content);
                defined $n or die "read $rel: $!\n";
                last if $n == 0;
            }
            $tree->{$rel} = $content;
        }
    }
    return $tree;
}

sub same {
    my ($a, $b) = @_;
    return 0 if keys %$a != keys %$b;
    for my $k (keys %$a) {
        return 0 unless exists $b->{$k};
        return 0 if (defined $a->{$k} ? 1 : 0) != (defined $b->{$k} ? 1 : 0);
        return 0 if defined $a->{$k} && $a->{$k} ne $b->{$k};
    }
    return 1;
}

sub check {
    my ($dir, $journal_path) = @_;
    open(my $journal, '<', $journal_path) or die "open $journal_path: $!\n";
    my (@ops, $durable);
    $durable = 0;
    while (my $line = <$journal>) {
        chomp $line;
        my ($what, $n, @rest) = split / /, $line;
        next unless defined $n;
        if ($what eq 'begin') { $ops[$n - 1] = \@rest; }
        elsif ($what eq 'durable') { $durable = $n; }
    }
    my $found = scan($dir, '', {});
    my %tree;
    for my $k (0 .. scalar @ops) {
        apply(\%tree, $k, @{ $ops[$k - 1] }) if $k > 0;
        next if $k < $durable;
        if (same(\%tree, $found)) {
            printf "ok: %d ops begun, %d covered by an fsync, the first %d survived\n",
                scalar @ops, $durable, $k;
            return;
        }
    }
    # Name what differs from the state of every op that fsync covered.
    my %want;
    apply(\%want, $_ + 1, @{ $ops[$_] }) for 0 .. $durable - 1;
    for my $k (sort keys %want) {
        if (!exists $found->{$k}) { print "  missing: $k\n" }
        elsif (defined $want{$k} && (!defined $found->{$k} || $found->{$k} ne $want{$k})) {
            printf "  differs: %s (%d bytes, want %d)\n", $k, length($found->{$k} // ''), length $want{$k};
        }
    }
    print "  present, not in any op: $_\n" for grep { !exists $want{$_} } sort keys %$found;
    die sprintf "FAIL: %s is no prefix of the %d ops begun with the %d covered by an fsync\n",
        $dir, scalar @ops, $durable;
}

sub digest {
    my ($dir) = @_;
    my $tree = scan($dir, '', {});
    for my $path (sort keys %$tree) {
        my $c = $tree->{$path};
        print defined $c
            ? sprintf("%s %d %u %u\n", $path, length $c, unpack('%32C*', $c), unpack('%32N*', $c))
            : "$path/\n";
    }
}

sub fsync_dir {
    my ($dir) = @_;
    sysopen(my $h, $dir, O_RDONLY | O_DIRECTORY) or die "open $dir: $!\n";
    $h->sync or die "fsync $dir: $!\n";
}

if ($mode eq 'run' && (@ARGV == 3 || (@ARGV == 4 && $ARGV[3] eq 'closes'))) { run(@ARGV) }
elsif ($mode eq 'mkdir' && @ARGV == 1) {
    mkdir($ARGV[0]) or die "mkdir $ARGV[0]: $!\n";
    fsync_dir("$ARGV[0]/..");
}
elsif ($mode eq 'check' && @ARGV == 2) { check(@ARGV) }
elsif ($mode eq 'digest' && @ARGV == 1) { digest(@ARGV) }
else { die "usage: powerloss.pl run DIR JOURNAL SEED [closes] | check DIR JOURNAL | digest DIR | mkdir DIR\n" }
