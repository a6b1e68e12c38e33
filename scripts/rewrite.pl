#!/usr/bin/perl
# Random 4 KiB rewrites of a file and of a local copy, with an fsync of the first every
# EVERY writes: what a database does to its pages. Dies, naming the call, on any error.
#
#   rewrite.pl FILE LOCAL_COPY WRITES EVERY
use strict;
use warnings;
use Fcntl qw(SEEK_SET);
use IO::Handle;

my ($path, $local, $writes, $every) = @ARGV;
die "usage: rewrite.pl FILE LOCAL_COPY WRITES EVERY\n" unless defined $every;
open(my $file, '+<:raw', $path) or die "open $path: $!\n";
open(my $copy, '+<:raw', $local) or die "open $local: $!\n";
my $pages = int((-s $path) / 4096);
die "$path: smaller than a page\n" if $pages < 1;
my $seed = 20261203;
for my $i (1 .. $writes) {
    $seed = ($seed * 1103515245 + 12345) % 2147483648;
    my $offset = ($seed % $pages) * 4096;
    my $page = pack('N', $i) x 1024;
    for my $fh ($file, $copy) {
        sysseek($fh, $offset, SEEK_SET) or die "seek $offset: $!\n";
        my $n = syswrite($fh, $page);
        die "write $offset: $!\n" unless defined $n && $n == 4096;
    }
    if ($i % $every == 0) {
        $file->sync or die "fsync after write $i: $!\n";
    }
}
$file->sync or die "fsync: $!\n";
close($file) or die "close $path: $!\n";
close($copy) or die "close $local: $!\n";
