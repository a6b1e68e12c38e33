#!/usr/bin/perl
# Copies LEN bytes of SRC at SRC_OFFSET to DST at DST_OFFSET with copy_file_range(2)
# itself (cp may choose another way), looping until done; dies naming the call on error.
#
#   copy-range.pl SRC SRC_OFFSET DST DST_OFFSET LEN
use strict;
use warnings;

my ($src, $src_offset, $dst, $dst_offset, $len) = @ARGV;
die "usage: copy-range.pl SRC SRC_OFFSET DST DST_OFFSET LEN\n" unless defined $len;
my $SYS_copy_file_range = 326;    # x86_64
open(my $in, '<:raw', $src) or die "open $src: $!\n";
open(my $out, '+<:raw', $dst) or die "open $dst: $!\n";
my $in_off = pack('q', $src_offset);
my $out_off = pack('q', $dst_offset);
while ($len > 0) {
    my $n = syscall($SYS_copy_file_range, fileno($in), $in_off, fileno($out), $out_off, $len, 0);
    die "copy_file_range: $!\n" if $n < 0;
    last if $n == 0;
    $len -= $n;
}
close($out) or die "close $dst: $!\n";
